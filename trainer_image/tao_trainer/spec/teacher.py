"""`generation.teacher` (who writes the candidates instead of, or beside, the model being tuned) and
`generation.modelEndpoint` (the model being tuned, sampled from a server)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tao_trainer.spec.base import MODEL_SCHEMES, CamelModel, check_scheme
from tao_trainer.spec.endpoint import EndpointSpec
from tao_trainer.spec.engine import EngineSpec


class ServedModelSpec(CamelModel):
    """The model being tuned, as a server already serves it (`generation.modelEndpoint`)."""

    endpoint: EndpointSpec = Field(description="The OpenAI-compatible server and the model name it serves.")
    api: Literal["chat", "completions"] = Field(
        default="chat",
        description="chat (/chat/completions) or completions (/completions, plain-text prompts).",
    )


class TeacherSpec(CamelModel):
    """Who writes the candidates instead of (or beside) the model being tuned: curated distillation. Either
    model weights run in the generate stage (`uri`) or an OpenAI-compatible endpoint (`endpoint`)."""

    uri: str | None = Field(default=None, description="A model, as model.uri: run inside the generate stage.")
    revision: str | None = Field(default=None, description="Hub revision, for hf:// only.")
    gguf_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="As model.ggufDtype, for a teacher uri naming a .gguf file."
    )
    engine: EngineSpec | None = Field(
        default=None, description="vLLM settings for a teacher uri (default: generation.engine)."
    )
    endpoint: EndpointSpec | None = Field(
        default=None,
        description="An OpenAI-compatible server (a hosted API, a gateway, an in-cluster vLLM, `tao serve`) "
        "asked for the teacher's candidates; its answers are kept in the run's storage, so a retried stage "
        "never pays for one twice.",
    )
    api: Literal["chat", "completions"] = Field(
        default="chat",
        description="endpoint: chat (/chat/completions with the prompt's messages) or completions "
        "(/completions with the prompt as plain text).",
    )
    share: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="The share of each prompt's candidates the teacher writes (rounded, at least one); the model "
        "being tuned writes the rest. Every candidate's source is kept in the candidates and scores files.",
    )

    @field_validator("uri")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        return v if v is None else check_scheme(v, MODEL_SCHEMES, "teacher uri")

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSpec:
        if (self.uri is None) == (self.endpoint is None):
            raise ValueError("generation.teacher needs exactly one of uri (a model) and endpoint (a server)")
        if self.endpoint is not None and (self.engine is not None or self.revision is not None):
            raise ValueError(
                "generation.teacher.engine and revision apply to a teacher uri, not to an endpoint"
            )
        return self

    def candidates(self, total: int) -> int:
        """How many of `total` candidates per prompt the teacher writes.

        >>> TeacherSpec(uri="file:///t", share=0.25).candidates(8), TeacherSpec(uri="file:///t", share=0.01).candidates(8)
        (2, 1)
        """
        return max(1, min(total, round(self.share * total)))
