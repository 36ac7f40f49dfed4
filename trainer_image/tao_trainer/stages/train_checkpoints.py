"""Checkpoints of a running train stage in the run's storage, and the resume from the newest one.

Layout, under `round-NNN/train/checkpoints/`: `checkpoint-<step>/node-<k>/` holds what node k's processes wrote
locally (the model, optimizer and scheduler states from rank 0, each rank's RNG state, ZeRO-3's per-rank
shards), and `checkpoint-<step>.complete` is written last, by rank 0, once every node uploaded its part: only a
checkpoint with its marker counts. A restarted stage downloads the newest complete checkpoint (every node's
part, into one local folder) and hands it to the trainer's `resume_from_checkpoint`, which restores the step,
the optimizer, the schedule, the RNG and the data order, so finished steps are not trained again.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from tao_trainer import storage
from tao_trainer.spec.training_scale import CheckpointSpec
from tao_trainer.stages.common import log

MARKER_SUFFIX = ".complete"
_MARKER = re.compile(r"/checkpoint-(\d+)\.complete$")


def checkpoints_prefix(train_dir: str) -> str:
    return f"{train_dir}/checkpoints"


def complete_steps(prefix: str) -> list[int]:
    """Steps of the complete checkpoints under `prefix`, oldest first."""
    steps = [int(m.group(1)) for uri in storage.list_uris(prefix) if (m := _MARKER.search(uri))]
    return sorted(steps)


def restore_newest(prefix: str, local_output_dir: Path) -> Path | None:
    """Download the newest complete checkpoint into `local_output_dir/checkpoint-<step>`; None if there is none."""
    steps = complete_steps(prefix)
    if not steps:
        return None
    step = steps[-1]
    local = local_output_dir / f"checkpoint-{step}"
    node_parts = {
        uri.removeprefix(f"{prefix}/checkpoint-{step}/").split("/", 1)[0]
        for uri in storage.list_uris(f"{prefix}/checkpoint-{step}")
    }
    for part in sorted(node_parts):
        storage.download_dir(f"{prefix}/checkpoint-{step}/{part}", local)
    log(f"train: resuming from the checkpoint of step {step} ({prefix}/checkpoint-{step})")
    return local


def wait_for_all() -> None:
    """A barrier of every training process (nothing outside a distributed run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _node() -> int:
    return int(os.environ.get("GROUP_RANK", os.environ.get("TAO_TRAIN_NODE_RANK", "0")))


def _local_main() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def save_due(last_save: float, now: float, every_minutes: float | None) -> bool:
    """Whether a time-based checkpoint is due.

    >>> save_due(0.0, 1799.0, 30.0), save_due(0.0, 1800.0, 30.0), save_due(0.0, 1e9, None)
    (False, True, False)
    """
    return every_minutes is not None and now - last_save >= every_minutes * 60


def _agree(flag: bool) -> bool:
    """Rank 0's decision on every rank: a save is collective under FSDP and ZeRO-3, so no rank may differ."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    box: list[Any] = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def checkpoint_callback(spec: CheckpointSpec, prefix: str) -> Any:
    """A TrainerCallback that saves on the clock (`everyMinutes`) and uploads every checkpoint the trainer
    writes (`everySteps` goes to the trainer's own save_steps) to storage, keeping the newest `keep`."""
    from transformers import TrainerCallback

    class StorageCheckpoints(TrainerCallback):
        def __init__(self) -> None:
            self.last_save = time.monotonic()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step >= state.max_steps:
                # The trainer saves at the last step; the stage saves the model right after, so a checkpoint
                # there would only cost a copy of the weights and optimizer states (~100 GB at 8B) in storage.
                control.should_save = False
            elif spec.every_minutes is not None and not control.should_save:
                control.should_save = _agree(save_due(self.last_save, time.monotonic(), spec.every_minutes))
            return control

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self.last_save = time.monotonic()
            name = f"checkpoint-{state.global_step}"
            local = Path(args.output_dir) / name
            wait_for_all()  # every rank has written its files (RNG state, ZeRO shards) before they are uploaded
            if _local_main() and local.is_dir():
                storage.upload_dir(local, f"{prefix}/{name}/node-{_node()}")
            wait_for_all()  # every node's part is in storage before the marker says the checkpoint is whole
            if _rank() == 0:
                storage.write_json(f"{prefix}/{name}{MARKER_SUFFIX}", {"step": state.global_step})
                log(f"train: checkpoint of step {state.global_step} saved to {prefix}/{name}")
                for old in complete_steps(prefix)[: -spec.keep]:
                    delete_checkpoint(prefix, old)
            return control

    return StorageCheckpoints()


def delete_checkpoint(prefix: str, step: int) -> None:
    """The marker first: a half-deleted checkpoint must never look complete."""
    storage.delete(f"{prefix}/checkpoint-{step}{MARKER_SUFFIX}")
    for uri in storage.list_uris(f"{prefix}/checkpoint-{step}"):
        storage.delete(uri)


def trainer_save_args(spec: CheckpointSpec) -> dict[str, Any]:
    """TrainingArguments for local checkpoints: steps from the spec, one kept on local disk (storage keeps the
    others), optimizer and RNG states included so that a resume continues exactly.

    >>> trainer_save_args(CheckpointSpec(everySteps=50))["save_steps"]
    50
    >>> trainer_save_args(CheckpointSpec(everySteps=None, everyMinutes=None))
    {'save_strategy': 'no'}
    """
    if not spec.enabled:
        return {"save_strategy": "no"}
    args: dict[str, Any] = {"save_total_limit": 1, "save_only_model": False}
    if spec.every_steps is not None:
        return args | {"save_strategy": "steps", "save_steps": spec.every_steps}
    # Clock-driven only: the callback sets should_save; "steps" with an unreachable interval keeps the
    # trainer's own schedule out of it while leaving the save machinery on.
    return args | {"save_strategy": "steps", "save_steps": 10**9}
