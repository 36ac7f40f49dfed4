"""An OpenAI-compatible HTTP endpoint (a judge, a teacher), and Secret key references."""

from __future__ import annotations

from pydantic import Field, model_validator

from tao_trainer.spec.base import CamelModel


class SecretKeySelector(CamelModel):
    """A key of a Kubernetes Secret in the TAOJob's namespace (as in a pod's `secretKeyRef`)."""

    name: str = Field(min_length=1, max_length=253, description="Secret name.")
    key: str = Field(min_length=1, max_length=253, description="Key in the Secret.")


class EndpointSpec(CamelModel):
    """An OpenAI-compatible HTTP endpoint: in-cluster vLLM, `tao serve`, or an external API."""

    url: str = Field(
        pattern=r"^https?://[^\s]+$",
        description="Base URL including the API prefix, e.g. http://judge.ml.svc:8000/v1.",
    )
    model: str = Field(min_length=1, description="Model name sent in each request.")
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description=(
            "Environment variable that holds the API key (sent as a Bearer token). The key itself "
            "never appears in specs, status, logs or artifacts."
        ),
    )
    api_key_secret_ref: SecretKeySelector | None = Field(
        default=None,
        description=(
            "On a cluster: the Secret key the operator exposes to stage pods as `apiKeyEnv` "
            "(which is then required)."
        ),
    )
    timeout_seconds: float = Field(default=60.0, gt=0, le=3600, description="Time limit of one HTTP request.")
    max_retries: int = Field(
        default=3,
        ge=0,
        le=20,
        description="Retries of a failed request (connection errors, 429, 5xx), with backoff.",
    )
    concurrency: int = Field(default=8, ge=1, le=256, description="Requests in flight at once.")
    requests_per_minute: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Rate limit: requests started in any 60 seconds."
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Rate limit: prompt + completion tokens (as the server reports them) in any 60 seconds; a "
        "request waits while the last minute's tokens reach it.",
    )

    @model_validator(mode="after")
    def _secret_needs_env(self) -> EndpointSpec:
        if self.api_key_secret_ref is not None and self.api_key_env is None:
            raise ValueError("apiKeySecretRef needs apiKeyEnv: the variable the key is exposed as")
        return self
