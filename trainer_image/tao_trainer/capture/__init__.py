"""The prompt-capture proxy (see ``proxy``), importable as ``tao_trainer.capture`` as before."""

from .proxy import CaptureBuffer, CaptureConfig, CaptureProxy, load_hook, main, redact_basic

__all__ = ["CaptureBuffer", "CaptureConfig", "CaptureProxy", "load_hook", "main", "redact_basic"]
