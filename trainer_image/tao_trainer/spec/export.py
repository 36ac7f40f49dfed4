"""`spec.export`: where each promoted champion is published for use outside the loop."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tao_trainer.spec.base import STORAGE_SCHEMES, CamelModel, check_scheme
from tao_trainer.spec.endpoint import SecretKeySelector


class HubExportSpec(CamelModel):
    """A Hugging Face Hub model repository each promoted champion is also pushed to (one commit per round)."""

    repo: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$",
        description="The repository id, owner/name. It is created (private unless `private: false`) when missing.",
    )
    private: bool = Field(default=True, description="Create the repository private.")
    endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="A Hub other than huggingface.co (a self-hosted mirror), e.g. https://hub.example.com.",
    )
    token_env: str = Field(
        default="TAO_EXPORT_HUB_TOKEN",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding a write token. Read by the export only and passed to the Hub "
        "client explicitly; it never appears in specs, status, logs or artifacts.",
    )
    token_secret_ref: SecretKeySelector | None = Field(
        default=None,
        description="On a cluster: the Secret key the operator exposes to the evaluate stage as `tokenEnv`.",
    )


class ExportSpec(CamelModel):
    """Publish every promoted champion: `<uri>/round-NNN/` holds the model and `tao_export.json` (its round, base,
    format and held-out figures); `<uri>/latest.json` names the newest, and is written after the files it names.
    Runs in the evaluate stage of a promoted round; an export that fails fails that stage (and is retried with
    it), so a promotion is never recorded without its export."""

    uri: str = Field(
        description="A storage prefix, file:///path or s3://bucket/prefix (spec.storage's credentials)."
    )
    format: Literal["asTrained", "merged"] = Field(
        default="asTrained",
        description="asTrained: the champion's folder as trained (full weights, or an unmerged LoRA adapter whose "
        "adapter_config.json names its base model); merged: an adapter is merged into its base and full weights "
        "are written (served without --enable-lora; needs memory for the whole model).",
    )
    hub: HubExportSpec | None = Field(
        default=None, description="Also push each export to a Hugging Face repo."
    )

    @field_validator("uri")
    @classmethod
    def _storage_uri(cls, v: str) -> str:
        return check_scheme(v, STORAGE_SCHEMES, "export uri")
