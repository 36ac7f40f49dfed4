"""`spec.storage.cache`: a volume the stage pods keep model downloads on, shared instead of one per pod."""

from __future__ import annotations

from pydantic import Field, model_validator

from tao_trainer.spec.base import CamelModel

#: Where the operator mounts the cache volume in stage pods (`TAO_CACHE_DIR`).
CACHE_MOUNT = "/var/cache/tao"


class CacheVolumeSpec(CamelModel):
    """Exactly one of `claimName` and `hostPath`. Every stage pod mounts it and downloads a model from storage
    into it once: the pods that follow (generate shards, train, evaluate) find it complete and read it there
    (a lock per model, and each file's size checked against the storage listing). Size it for the models of a
    run: the base model, one model per round (a LoRA round: its adapter) and the converted GGUF if any; old
    rounds' models are not removed from it."""

    claim_name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
        description="A PersistentVolumeClaim in the TAOJob's namespace: ReadWriteMany shares one download across "
        "nodes (e.g. NFS, CephFS, Filestore); ReadWriteOnce only among the pods of one node.",
    )
    host_path: str | None = Field(
        default=None,
        pattern=r"^/.*$",
        description="A directory on each node (created if missing; it must be writable by uid 1000): one "
        "download per node. Pod Security's baseline and restricted levels forbid hostPath volumes.",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> CacheVolumeSpec:
        if (self.claim_name is None) == (self.host_path is None):
            raise ValueError(
                "storage.cache needs exactly one of claimName (a PVC) and hostPath (a node directory)"
            )
        return self
