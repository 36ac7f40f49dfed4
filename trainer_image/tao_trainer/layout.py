"""Where a run keeps everything: one `RunLayout` for both executors and every stage, so that paths agree.

Pure string work on URIs: the operator builds its layout without loading the storage layer.
"""

from __future__ import annotations

from typing import Literal

from tao_trainer import uris


class RunLayout:
    """Where each artifact of one run lives; shared by stages and executors so that paths agree.

    >>> lay = RunLayout("s3://b/runs/ns/job/uid")
    >>> lay.shard("prompts", 2, 7)
    's3://b/runs/ns/job/uid/round-002/prompts/shard-00007.jsonl'
    >>> lay.result(1, "train")
    's3://b/runs/ns/job/uid/round-001/results/train.json'
    """

    def __init__(self, run_uri: str) -> None:
        self.root = run_uri.rstrip("/")

    @classmethod
    def for_job(cls, storage_uri: str, namespace: str, name: str, uid: str | None) -> RunLayout:
        """The run of one TAOJob: <storage>/<namespace>/<name>/<uid>; a local run has no uid (`local`).

        >>> RunLayout.for_job("s3://b/runs/", "ml", "qa", None).root
        's3://b/runs/ml/qa/local'
        """
        return cls(uris.join(uris.normalize(storage_uri), namespace, name, uid or "local"))

    def round_dir(self, round_: int) -> str:
        return f"{self.root}/round-{round_:03d}"

    def shard(self, kind: Literal["prompts", "candidates", "scores"], round_: int, shard: int) -> str:
        return f"{self.round_dir(round_)}/{kind}/shard-{shard:05d}.jsonl"

    def shard_part(self, round_: int, shard: int, part: int) -> str:
        """Part `part` of a candidates shard: written as generation goes, so that a restarted pod resumes from
        its parts; the shard itself is written once, whole, from them (only a whole shard is complete).

        >>> RunLayout("s3://b/r").shard_part(1, 3, 2)
        's3://b/r/round-001/candidates/shard-00003.parts/part-00002.jsonl'
        """
        return f"{self.round_dir(round_)}/candidates/shard-{shard:05d}.parts/part-{part:05d}.jsonl"

    def rejects(self, round_: int) -> str:
        return f"{self.round_dir(round_)}/prompts/rejects.jsonl"

    def watermark(self, round_: int) -> str:
        """Version tags of the prompt objects as round `round_`'s prepare saw them (continuous mode)."""
        return f"{self.round_dir(round_)}/prepare/watermark.json"

    def new_ids(self, round_: int) -> str:
        """Ids of the prompts round `round_` used first (continuous mode: the union over rounds is 'seen')."""
        return f"{self.round_dir(round_)}/prepare/ids.txt"

    @property
    def history(self) -> str:
        """One line per evaluated round: the full history (status keeps only the latest rounds)."""
        return f"{self.root}/history.jsonl"

    @property
    def converted_models(self) -> str:
        """Models converted for the run (a .gguf base or teacher as an HF folder): converted once, read by every
        stage and by the serving init container."""
        return f"{self.root}/models"

    def answer_cache(self, endpoint: str) -> str:
        """Answers an endpoint gave this run (`answer_cache`): kept for the whole run, so that a retried or
        resumed stage never pays for the same request twice. `endpoint` names it (e.g. "teacher").

        >>> RunLayout("s3://b/r").answer_cache("teacher")
        's3://b/r/cache/teacher'
        """
        return f"{self.answer_cache_root}/{endpoint}"

    def model_answers(self, key: str) -> str:
        """A model's held-out answers, kept by `evaluate` under the key of what decides them
        (`evaluation.reuseAnswers`): one object each, read back only by a later evaluate of the same key."""
        return f"{self.answer_cache_root}/evaluation/{key}.json"

    @property
    def answer_cache_root(self) -> str:
        return f"{self.root}/cache"

    def preflight_report(self, round_: int) -> str:
        return f"{self.round_dir(round_)}/preflight/report.json"

    def preflight_samples(self, round_: int) -> str:
        return f"{self.round_dir(round_)}/preflight/samples.jsonl"

    def heldout(self, round_: int) -> str:
        return f"{self.round_dir(round_)}/heldout/prompts.jsonl"

    def heldout_labels(self, round_: int) -> str:
        return f"{self.round_dir(round_)}/heldout/labels.jsonl"

    def train_dir(self, round_: int) -> str:
        return f"{self.round_dir(round_)}/train"

    def model(self, round_: int) -> str:
        return f"{self.train_dir(round_)}/model"

    def eval_report(self, round_: int) -> str:
        return f"{self.round_dir(round_)}/eval/report.json"

    def eval_samples(self, round_: int) -> str:
        return f"{self.round_dir(round_)}/eval/samples.jsonl"

    def config(self, round_: int, stage: str) -> str:
        return f"{self.round_dir(round_)}/configs/{stage}.json"

    def result(self, round_: int, stage: str) -> str:
        return f"{self.round_dir(round_)}/results/{stage}.json"

    @property
    def champion(self) -> str:
        return f"{self.root}/champion.json"

    @property
    def report(self) -> str:
        return f"{self.root}/report.json"

    @property
    def spec_snapshot(self) -> str:
        return f"{self.root}/spec.json"
