"""Directory trees: a model folder uploaded, downloaded (swapped in atomically) and cached locally."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tao_trainer.storage import transfers
from tao_trainer.storage.client import _client, _not_found
from tao_trainer.storage.objects import (
    _TMP_SUFFIX,
    _dir_prefix,
    _local_files,
    _s3_objects,
    _umask,
    write_json,
)
from tao_trainer.uris import split


def _safe_relative(uri: str, rel: str) -> str:
    """Refuse keys that would land outside the target directory when downloaded."""
    parts = rel.split("/")
    if rel.startswith("/") or ".." in parts or any(p == "" for p in parts):
        raise ValueError(f"refusing to download {uri!r}: key part {rel!r} is not a plain relative path")
    return rel


def upload_dir(local_dir: Path, uri: str) -> None:
    """Make the tree at ``uri`` a copy of ``local_dir`` (files there but not in ``local_dir`` go).

    file://: copy into a temp dir beside the target, then rename it into place; the target is missing
    only for the instant between two renames. s3://: upload every file (multipart when large), then
    delete stale keys; readers during an upload may see a mix, so publish a marker object after it
    when readers need a consistent tree.
    """
    src = Path(local_dir)
    if not src.is_dir():
        raise _not_found(str(src))
    scheme, where, key = split(uri)
    if scheme == "file":
        dest = Path(where)
        if dest.exists() and dest.resolve() == src.resolve():
            return
        if dest.resolve().is_relative_to(src.resolve()) or src.resolve().is_relative_to(dest.resolve()):
            # Either the copy would recurse into itself or the swap would delete the source.
            raise ValueError(f"cannot upload {src} to {uri}: one contains the other")
        if dest == Path(dest.anchor):
            raise ValueError(f"refusing to replace the filesystem root with {src}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=_TMP_SUFFIX))
        try:
            shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*" + _TMP_SUFFIX))
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
            _swap_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return
    if not key.strip("/"):
        # Replacement semantics would delete every other object in the bucket.
        raise ValueError(f"refusing to upload a directory to a bucket root: {uri!r}")
    prefix = _dir_prefix(key)
    client = _client()
    uploaded: set[str] = set()
    for rel in sorted(_local_files(str(src))):
        client.upload_file(str(src / rel), where, prefix + rel)
        uploaded.add(prefix + rel)
    stale = [o["Key"] for o in _s3_objects(uri, where, key) if o["Key"] not in uploaded]
    for start in range(0, len(stale), 1000):  # delete_objects takes at most 1000 keys
        batch = [{"Key": k} for k in stale[start : start + 1000]]
        client.delete_objects(Bucket=where, Delete={"Objects": batch, "Quiet": True})


def _swap_dir(new: Path, dest: Path) -> None:
    """Rename ``new`` over ``dest`` (a directory or absent); rename cannot replace a non-empty dir."""
    if dest.is_dir() and not dest.is_symlink():
        old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old.", suffix=_TMP_SUFFIX))
        os.replace(dest, old)  # replaces the empty dir mkdtemp just made
        os.replace(new, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if dest.exists() or dest.is_symlink():
            dest.unlink()
        os.replace(new, dest)


def download_dir(uri: str, local_dir: Path) -> Path:
    """Copy the tree at ``uri`` into ``local_dir`` (created; files already there are kept or replaced).

    Raises FileNotFoundError when nothing is under ``uri``.
    """
    dest = Path(local_dir)
    scheme, where, key = split(uri)
    if scheme == "file":
        if not os.path.isdir(where):
            raise _not_found(uri)
        shutil.copytree(where, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*" + _TMP_SUFFIX))
        return dest
    objects = _s3_objects(uri, where, key)
    if not objects:
        raise _not_found(uri)
    _download_objects(uri, where, key, objects, dest)
    return dest


def _download_objects(uri: str, bucket: str, key: str, objects: list[dict[str, Any]], dest: Path) -> None:
    prefix = _dir_prefix(key)
    client = _client()
    transfers.add("treesPulled")
    for obj in objects:
        transfers.add("bytesPulled", int(obj["Size"]))
        transfers.add("treeBytesPulled", int(obj["Size"]))
        rel = _safe_relative(uri, obj["Key"][len(prefix) :])
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        # download_file writes to a temp name and renames, and goes multipart for large objects.
        client.download_file(bucket, obj["Key"], str(target))


def _cache_root(cache_root: Path | None) -> Path:
    if cache_root is not None:
        return Path(cache_root)
    env = os.environ.get("TAO_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tao"


def local_dir(uri: str, cache_root: Path | None = None) -> Path:
    """A local directory holding the tree at ``uri``.

    file://: the directory itself. s3://: a download under ``cache_root`` (else ``$TAO_CACHE_DIR``, else
    ``~/.cache/tao``), reused while the remote listing (keys, sizes, ETags) matches the one recorded in a
    marker written after the last complete download and every file is there at its size; otherwise
    downloaded again whole. Processes sharing the cache directory (a round's pods on one volume) take a
    lock per tree: one downloads, the others wait and then find it complete.
    """
    scheme, where, key = split(uri)
    if scheme == "file":
        if not os.path.isdir(where):
            raise _not_found(uri)
        return Path(where)
    objects = _s3_objects(uri, where, key)
    if not objects:
        raise _not_found(uri)
    manifest = _manifest(where, key, objects)
    target, marker = _cache_paths(cache_root, manifest)
    with cache_lock(target.with_name(f"{target.name}.lock")):
        if _complete(target, marker, manifest):
            transfers.add("treeCacheHits")
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=_TMP_SUFFIX))
        try:
            _download_objects(uri, where, key, objects, tmp)
            _install(tmp, target, marker, manifest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def cache_tree(local: Path, uri: str, cache_root: Path | None = None) -> None:
    """Put a tree just uploaded to ``uri`` from ``local`` into the cache, as if downloaded: the stage that
    wrote a model (train) spares the next one on the same cache (evaluate) its download. Copies ``local``;
    does nothing for file:// or when the listing no longer matches ``local`` (another writer since)."""
    scheme, where, key = split(uri)
    if scheme == "file":
        return
    objects = _s3_objects(uri, where, key)
    manifest = _manifest(where, key, objects)
    sizes = {rel: size for rel, size, _ in manifest["objects"]}
    if sizes != {rel: (local / rel).stat().st_size for rel in _local_files(str(local))}:
        return
    target, marker = _cache_paths(cache_root, manifest)
    with cache_lock(target.with_name(f"{target.name}.lock")):
        if _complete(target, marker, manifest):
            return
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=_TMP_SUFFIX))
        try:
            shutil.copytree(local, tmp, dirs_exist_ok=True)
            _install(tmp, target, marker, manifest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _manifest(bucket: str, key: str, objects: list[dict[str, Any]]) -> dict[str, Any]:
    """What a cached tree must match: the listing's keys, sizes and ETags."""
    prefix = _dir_prefix(key)
    return {
        "uri": f"s3://{bucket}/{prefix}",
        "objects": [[o["Key"][len(prefix) :], o["Size"], o.get("ETag", "")] for o in objects],
    }


def _cache_paths(cache_root: Path | None, manifest: dict[str, Any]) -> tuple[Path, Path]:
    """(the tree's directory, its completion marker) in the cache; the marker sits beside the tree, not in
    it, so the tree is exactly what was uploaded."""
    root = _cache_root(cache_root) / "s3"
    root.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(manifest["uri"].encode("utf-8")).hexdigest()[:24]
    return root / digest, root / f"{digest}.complete.json"


@contextlib.contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` between processes (flock: local disks, and NFSv4 volumes)."""
    import fcntl

    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _complete(target: Path, marker: Path, manifest: dict[str, Any]) -> bool:
    """The cached tree matches the listing (marker) and holds every file at its size (a file removed or cut
    short by a disk cleaner or a crash is caught here, not inside from_pretrained)."""
    if not (target.is_dir() and marker.is_file()):
        return False
    try:
        if json.loads(marker.read_text("utf-8")) != manifest:
            return False
        return all((target / rel).stat().st_size == size for rel, size, _ in manifest["objects"])
    except (ValueError, OSError):
        return False


def _install(tmp: Path, target: Path, marker: Path, manifest: dict[str, Any]) -> None:
    with contextlib.suppress(FileNotFoundError):
        marker.unlink()  # the old tree is about to go; never leave a marker vouching for it
    _swap_dir(tmp, target)
    write_json(str(marker), manifest)
