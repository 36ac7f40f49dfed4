"""`tao serve MODEL_URI`: a small OpenAI-compatible HTTP server over a transformers model (CPU or one GPU).

For local runs and tests, not for production traffic (a cluster serves the champion with vLLM): it lets a
local run try its champion with any OpenAI client, and lets the `judge` scorer be tested against a real model
over real HTTP. Standard library HTTP (`http.server`); torch, transformers and peft load with the model.
docs/serve.md lists the OpenAI fields honoured and how it differs from vLLM.

Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (streaming with `stream: true`), `GET
/v1/models`, `GET /v1/models/{name}`, `GET /health`. A field it would not honour is a 400 naming it.

The modules: `request` reads a request, `backend` holds the model and its LoRA adapters, `batching` queues
requests and batches them, `decode` generates one batch, `response` shapes answers and stream chunks,
`handler` is the HTTP handler, and `server` starts and stops the whole.

With an API key (`--api-key`, or `TAO_SERVE_API_KEY`), `/v1/*` needs `Authorization: Bearer <key>`;
`/health` stays open for probes. The key is never logged.
"""

from tao_trainer.serve.server import (
    API_KEY_ENV,
    LoraModule,
    RequestError,
    Sampling,
    ServerHandle,
    TransformersBackend,
    default_served_name,
    parse_lora_module,
    parse_messages,
    parse_prompts,
    parse_sampling,
    serve_cli,
    start_server,
)

__all__ = [
    "API_KEY_ENV",
    "LoraModule",
    "RequestError",
    "Sampling",
    "ServerHandle",
    "TransformersBackend",
    "default_served_name",
    "parse_lora_module",
    "parse_messages",
    "parse_prompts",
    "parse_sampling",
    "serve_cli",
    "start_server",
]
