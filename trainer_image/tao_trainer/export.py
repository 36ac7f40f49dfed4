"""Publishing a promoted champion (`spec.export`): to a storage prefix, and optionally to a Hugging Face repo.

`<uri>/round-NNN/` is a model folder a user loads without tao: full weights (`from_pretrained`), or an unmerged
LoRA adapter whose `adapter_config.json` names its base (`AutoPeftModelForCausalLM.from_pretrained`, vLLM
`--lora-modules`), beside `tao_export.json`. `<uri>/latest.json` names the newest export and is written after
the folder it names; a re-run of an older round never moves it back.

The Hub push (`export.hub`) uses `huggingface_hub` with the token passed explicitly; it is exercised here only up
to the point of contacting the Hub (no test in this repository reaches a real Hub).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tao_trainer import models, storage, uris
from tao_trainer.spec.export import ExportSpec, HubExportSpec

EXPORT_FILE = "tao_export.json"
LATEST_FILE = "latest.json"


def round_uri(spec: ExportSpec, round_: int) -> str:
    """
    >>> round_uri(ExportSpec(uri="s3://models/support-bot/"), 3)
    's3://models/support-bot/round-003'
    """
    return uris.join(uris.normalize(spec.uri), f"round-{round_:03d}")


def base_id(base_uri: str) -> str:
    """How a base model is named to tools outside tao (peft's `base_model_name_or_path`): a hub id for hf://,
    a path for file://, the URI itself otherwise.

    >>> base_id("hf://HuggingFaceTB/SmolLM2-135M-Instruct"), base_id("file:///models/base")
    ('HuggingFaceTB/SmolLM2-135M-Instruct', '/models/base')
    """
    if base_uri.startswith("hf://"):
        return base_uri.removeprefix("hf://")
    return base_uri.removeprefix("file://")


def _write_folder(spec: ExportSpec, champion_uri: str, out: Path) -> dict[str, Any]:
    """The export's model files in `out`; returns what `tao_export.json` says about them."""
    local = models.resolve(champion_uri)
    base_uri = models.adapter_base_uri(local)
    if base_uri is None:
        shutil.copytree(local, out, dirs_exist_ok=True)
        return {"format": "full"}
    if spec.format == "merged":
        model = models.load_causal_lm(local)  # base + adapter, merged (peft merge_and_unload)
        models.save_model(model, models.load_tokenizer(local), out)
        return {"format": "merged", "base": base_uri}
    shutil.copytree(local, out, dirs_exist_ok=True)
    config_path = out / "adapter_config.json"
    config = json.loads(config_path.read_text())
    # Saved by peft with the training pod's local path; outside tao, the base's own name is what loads it.
    config["base_model_name_or_path"] = base_id(base_uri)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return {"format": "adapter", "base": base_uri}


def export_champion(
    spec: ExportSpec, champion_uri: str, round_: int, metrics: dict[str, float | None]
) -> dict[str, Any]:
    """Publish the champion promoted in `round_`; returns the export's record (also its `tao_export.json`)."""
    dest = round_uri(spec, round_)
    with tempfile.TemporaryDirectory(prefix="tao-export-") as tmp:
        folder = Path(tmp) / "model"
        described = _write_folder(spec, champion_uri, folder)
        record = {
            "round": round_,
            "uri": dest,
            "source": champion_uri,
            **described,
            "metrics": metrics,
            "exportedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (folder / EXPORT_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
        storage.upload_dir(folder, dest)
        latest_uri = uris.join(uris.normalize(spec.uri), LATEST_FILE)
        latest = storage.read_json(latest_uri) if storage.exists(latest_uri) else {}
        if int(latest.get("round", 0)) <= round_:
            storage.write_json(latest_uri, record)
        if spec.hub is not None:
            record["hub"] = push_to_hub(spec.hub, folder, round_)
    return record


def push_to_hub(hub: HubExportSpec, folder: Path, round_: int) -> str:
    """Upload `folder` as one commit to the Hub repo (created when missing); returns the repo's URL."""
    token = os.environ.get(hub.token_env, "")
    if not token:
        raise RuntimeError(
            f"export.hub: the environment variable {hub.token_env} (export.hub.tokenEnv) is not set or empty: "
            "set it to a Hub token with write access (on a cluster: export.hub.tokenSecretRef)"
        )
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.endpoint, token=token)
    try:
        url = api.create_repo(hub.repo, private=hub.private, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=hub.repo,
            folder_path=str(folder),
            commit_message=f"tao: champion promoted in round {round_}",
        )
    except Exception as exc:  # whatever the Hub client raised, said without the token
        message = f"{type(exc).__name__}: {exc}".replace(token, "[SECRET]")
        raise RuntimeError(f"export.hub: pushing round {round_} to {hub.repo!r} failed: {message}") from None
    return str(url)
