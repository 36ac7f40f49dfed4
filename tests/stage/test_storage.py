"""storage: the same behaviour on file:// and on S3 (a moto server over HTTP)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tao_trainer import storage
from tao_trainer.storage import StorageOptions


@pytest.fixture(autouse=True)
def _unconfigured() -> Iterator[None]:
    """Each test starts and ends with no process-wide options (the environment decides)."""
    storage.configure(None)
    yield
    storage.configure(None)


def _files_under(root: str) -> list[str]:
    """Every entry on disk, temp files included (list_uris hides those, so it cannot show a leak)."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


# --------------------------------------------------------------------------- URIs


def test_normalize_turns_paths_into_file_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage.normalize("data/p.jsonl") == f"file://{tmp_path}/data/p.jsonl"
    assert storage.normalize(str(tmp_path / "a" / ".." / "b")) == f"file://{tmp_path}/b"
    assert storage.normalize(f"file://{tmp_path}//x/") == f"file://{tmp_path}/x"
    assert storage.normalize("file://localhost/srv/x") == "file:///srv/x"
    assert storage.normalize("s3://bucket/k/v.json") == "s3://bucket/k/v.json"


@pytest.mark.parametrize("uri", ["gs://bucket/x", "http://host/x", "S3://", "file://relative/x"])
def test_normalize_rejects_unsupported_uris_by_name(uri: str) -> None:
    with pytest.raises(ValueError) as info:
        storage.normalize(uri)
    assert repr(uri) in str(info.value)


def test_unsupported_scheme_error_lists_allowed_schemes() -> None:
    with pytest.raises(ValueError, match=r"one of file, s3"):
        storage.read_bytes("gs://bucket/x")


def test_join_normalises_slashes_on_both_schemes() -> None:
    assert storage.join("s3://b", "x") == "s3://b/x"
    assert storage.join("s3://b/", "/runs//a/", "", "./c.json") == "s3://b/runs/a/c.json"
    assert storage.join("file:///data/", "round-001/", "/scores") == "file:///data/round-001/scores"
    assert storage.join("file:///", "x") == "file:///x"
    assert storage.join("s3://b/k") == "s3://b/k"
    with pytest.raises(ValueError, match=r"'\.\.'"):
        storage.join("s3://b/k", "../escape")


# --------------------------------------------------------------------------- objects


def test_bytes_text_and_json_roundtrip(storage_root: str) -> None:
    storage.write_bytes(storage.join(storage_root, "a/b/blob.bin"), b"\x00\x01\xff")
    assert storage.read_bytes(storage.join(storage_root, "a/b/blob.bin")) == b"\x00\x01\xff"
    storage.write_text(storage.join(storage_root, "t.txt"), "héllo\n")
    assert storage.read_text(storage.join(storage_root, "t.txt")) == "héllo\n"
    doc = {"z": 1, "a": [1, 2, {"ü": None}]}
    storage.write_json(storage.join(storage_root, "doc.json"), doc)
    assert storage.read_json(storage.join(storage_root, "doc.json")) == doc
    # indent=2 and key order kept, so documents stay readable and diffable.
    assert storage.read_text(storage.join(storage_root, "doc.json")).startswith('{\n  "z": 1,')


def test_overwrite_replaces_the_whole_object(storage_root: str) -> None:
    uri = storage.join(storage_root, "x.txt")
    storage.write_text(uri, "a long first version")
    storage.write_text(uri, "short")
    assert storage.read_text(uri) == "short"


def test_writes_leave_no_temp_files(tmp_path: Path) -> None:
    root = f"file://{tmp_path}"
    storage.write_bytes(f"{root}/d/a.bin", b"1")
    storage.write_jsonl(f"{root}/d/b.jsonl", [{"i": 1}])
    storage.write_json(f"{root}/d/c.json", {})
    assert _files_under(str(tmp_path)) == ["d", "d/a.bin", "d/b.jsonl", "d/c.json"]


def test_written_files_get_the_umask_mode_not_0600(tmp_path: Path) -> None:
    storage.write_text(f"file://{tmp_path}/x", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_keeps_the_old_object_and_leaves_nothing_behind(storage_root: str) -> None:
    uri = storage.join(storage_root, "shard-00000.jsonl")
    storage.write_jsonl(uri, [{"v": "old"}])

    def records() -> Iterator[dict[str, str]]:
        yield {"v": "new"}
        raise RuntimeError("generator died mid-write")

    with pytest.raises(RuntimeError):
        storage.write_jsonl(uri, records())
    assert storage.read_jsonl(uri) == [{"v": "old"}]
    assert storage.list_uris(storage_root) == [uri]
    if uri.startswith("file://"):
        assert _files_under(storage_root.removeprefix("file://")) == ["shard-00000.jsonl"]


def test_missing_objects_raise_file_not_found_naming_the_uri(storage_root: str) -> None:
    uri = storage.join(storage_root, "nope/missing.json")
    for read in (storage.read_bytes, storage.read_text, storage.read_json, storage.read_jsonl):
        with pytest.raises(FileNotFoundError) as info:
            read(uri)
        assert info.value.filename == uri
    storage.delete(uri)  # deleting what is not there is fine


def test_exists_and_delete(storage_root: str) -> None:
    uri = storage.join(storage_root, "dir/obj.txt")
    assert not storage.exists(uri)
    storage.write_text(uri, "x")
    assert storage.exists(uri)
    # A directory (prefix) is not an object, on either scheme.
    assert not storage.exists(storage.join(storage_root, "dir"))
    storage.delete(uri)
    assert not storage.exists(uri)


def test_missing_bucket_reads_as_missing(s3_server: str) -> None:
    assert not storage.exists("s3://no-such-bucket-xyz/k")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("s3://no-such-bucket-xyz/k")


def test_jsonl_roundtrip_keeps_unicode_as_utf8(storage_root: str) -> None:
    uri = storage.join(storage_root, "u.jsonl")
    records = [{"text": "naïve café ☕ 数学 🚀", "n": i} for i in range(3)] + [{"nested": {"é": ["ß"]}}]
    storage.write_jsonl(uri, iter(records))
    assert storage.read_jsonl(uri) == records
    raw = storage.read_bytes(uri)
    assert "🚀".encode() in raw and b"\\u" not in raw  # ensure_ascii=False: readable, not escaped
    assert raw.count(b"\n") == 4 and raw.endswith(b"\n")


def test_read_jsonl_skips_blank_lines_and_reports_bad_ones(storage_root: str) -> None:
    uri = storage.join(storage_root, "b.jsonl")
    storage.write_bytes(uri, b'{"a": 1}\r\n\n  \n{"a": 2}')
    assert storage.read_jsonl(uri) == [{"a": 1}, {"a": 2}]
    storage.write_bytes(uri, b'{"a": 1}\n[1]\n')
    with pytest.raises(ValueError, match=r":2: not a JSON object"):
        storage.read_jsonl(uri)


# --------------------------------------------------------------------------- listing


def test_list_uris_treats_the_prefix_as_a_directory(storage_root: str) -> None:
    for rel in (
        "round-1/b.jsonl",
        "round-1/a.jsonl",
        "round-1/sub/c.jsonl",
        "round-10/x.jsonl",
        "round-1.json",
    ):
        storage.write_text(storage.join(storage_root, rel), "{}")
    expected = [
        storage.join(storage_root, r) for r in ("round-1/a.jsonl", "round-1/b.jsonl", "round-1/sub/c.jsonl")
    ]
    assert storage.list_uris(storage.join(storage_root, "round-1")) == expected
    assert storage.list_uris(storage.join(storage_root, "round-1") + "/") == expected
    assert len(storage.list_uris(storage_root)) == 5
    assert storage.list_uris(storage.join(storage_root, "round-2")) == []
    assert storage.list_uris(storage.join(storage_root, "round-1/a.jsonl")) == []  # an object is no prefix


def test_list_uris_and_trees_page_through_s3_listings(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage.objects, "_LIST_PAGE_SIZE", 2)  # 7 keys: four pages, the same code as 1000+
    for i in range(7):
        storage.write_text(f"s3://{s3_bucket}/p/{i:03d}", str(i))
    uris = storage.list_uris(f"s3://{s3_bucket}/p")
    assert uris == [f"s3://{s3_bucket}/p/{i:03d}" for i in range(7)]
    assert len(list((storage.download_dir(f"s3://{s3_bucket}/p", tmp_path / "d")).iterdir())) == 7


def test_list_uris_on_missing_bucket_is_an_error_not_empty(s3_server: str) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.list_uris("s3://no-such-bucket-xyz/p")


# --------------------------------------------------------------------------- trees


def _make_tree(root: Path) -> dict[str, bytes]:
    content = {
        "config.json": b'{"n": 1}',
        "weights/model.safetensors": os.urandom(300_000),
        "weights/deep/er/tokenizer.json": "ü".encode(),
        "empty.txt": b"",
    }
    for rel, data in content.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return content


def _read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_upload_and_download_dir_roundtrip(storage_root: str, tmp_path: Path) -> None:
    content = _make_tree(tmp_path / "src")
    uri = storage.join(storage_root, "round-001/train/model")
    storage.upload_dir(tmp_path / "src", uri)
    assert storage.list_uris(uri) == sorted(storage.join(uri, rel) for rel in content)
    out = storage.download_dir(uri, tmp_path / "dst")
    assert out == tmp_path / "dst"
    assert _read_tree(out) == content


def test_upload_dir_replaces_the_previous_tree(storage_root: str, tmp_path: Path) -> None:
    uri = storage.join(storage_root, "model")
    _make_tree(tmp_path / "v1")
    storage.upload_dir(tmp_path / "v1", uri)
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "config.json").write_text("v2")
    storage.upload_dir(tmp_path / "v2", uri)
    assert storage.list_uris(uri) == [storage.join(uri, "config.json")]
    assert storage.read_text(storage.join(uri, "config.json")) == "v2"
    if uri.startswith("file://"):  # the swap left no temp or old directories beside it
        assert _files_under(storage_root.removeprefix("file://")) == ["model", "model/config.json"]


def test_download_dir_of_nothing_is_file_not_found(storage_root: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        storage.download_dir(storage.join(storage_root, "absent"), tmp_path / "dst")
    with pytest.raises(FileNotFoundError):
        storage.local_dir(storage.join(storage_root, "absent"), cache_root=tmp_path / "cache")


def test_upload_dir_refuses_a_bucket_root(s3_bucket: str, tmp_path: Path) -> None:
    _make_tree(tmp_path / "src")
    with pytest.raises(ValueError, match="bucket root"):
        storage.upload_dir(tmp_path / "src", f"s3://{s3_bucket}/")


def test_local_dir_is_the_directory_itself_for_file(tmp_path: Path) -> None:
    _make_tree(tmp_path / "m")
    assert storage.local_dir(f"file://{tmp_path}/m") == tmp_path / "m"
    assert storage.local_dir(str(tmp_path / "m")) == tmp_path / "m"


def test_local_dir_caches_s3_trees_until_they_change(s3_bucket: str, tmp_path: Path) -> None:
    content = _make_tree(tmp_path / "src")
    uri = f"s3://{s3_bucket}/models/base"
    storage.upload_dir(tmp_path / "src", uri)
    cache = tmp_path / "cache"
    first = storage.local_dir(uri, cache_root=cache)
    assert _read_tree(first) == content
    assert cache in first.parents
    # Reused: a marker file does the bookkeeping outside the tree, and nothing is downloaded again while the
    # remote listing is unchanged (an edit of the same size survives: only sizes are checked locally).
    (first / "config.json").write_bytes(b'{"n": 9}')
    assert storage.local_dir(uri, cache_root=cache) == first
    assert (first / "config.json").read_bytes() == b'{"n": 9}'
    # The remote tree changed: downloaded again, whole.
    storage.write_bytes(f"{uri}/config.json", b'{"n": 2}')
    again = storage.local_dir(uri, cache_root=cache)
    assert again == first and (again / "config.json").read_bytes() == b'{"n": 2}'
    assert not any(p.name.endswith(".tao-tmp") for p in cache.rglob("*"))


def test_local_dir_downloads_again_a_damaged_cached_tree(s3_bucket: str, tmp_path: Path) -> None:
    content = _make_tree(tmp_path / "src")
    uri = f"s3://{s3_bucket}/models/damaged"
    storage.upload_dir(tmp_path / "src", uri)
    cache = tmp_path / "cache"
    first = storage.local_dir(uri, cache_root=cache)
    # A crash or a disk cleaner cut a weight file short, or removed one: found before from_pretrained reads it.
    weights = first / "weights" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert _read_tree(storage.local_dir(uri, cache_root=cache)) == content
    (first / "weights" / "deep" / "er" / "tokenizer.json").unlink()
    assert _read_tree(storage.local_dir(uri, cache_root=cache)) == content


PULL = """
import json, sys
from tao_trainer import storage
from tao_trainer.storage import transfers
path = storage.local_dir(sys.argv[1])
print(json.dumps({"path": str(path), "counts": transfers.counts()}))
"""


def test_processes_sharing_a_cache_directory_download_a_tree_once(s3_bucket: str, tmp_path: Path) -> None:
    """A round's pods on one cache volume: one downloads, the others wait for it and read it complete."""
    import subprocess
    import sys

    content = _make_tree(tmp_path / "src")
    size = sum(len(v) for v in content.values())
    uri = f"s3://{s3_bucket}/models/shared"
    storage.upload_dir(tmp_path / "src", uri)
    env = os.environ | {"TAO_CACHE_DIR": str(tmp_path / "volume")}
    procs = [
        subprocess.Popen([sys.executable, "-c", PULL, uri], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len({o["path"] for o in outs}) == 1 and _read_tree(Path(outs[0]["path"])) == content
    counts = [o["counts"] for o in outs]
    assert sum(c.get("treesPulled", 0) for c in counts) == 1
    assert sum(c.get("treeBytesPulled", 0) for c in counts) == size
    assert sum(c.get("treeCacheHits", 0) for c in counts) == 3


def test_a_tree_just_uploaded_is_cached_without_a_download(s3_bucket: str, tmp_path: Path) -> None:
    from tao_trainer.storage import transfers

    content = _make_tree(tmp_path / "src")
    uri = f"s3://{s3_bucket}/models/trained"
    storage.upload_dir(tmp_path / "src", uri)
    storage.cache_tree(tmp_path / "src", uri, cache_root=tmp_path / "cache")
    transfers.reset()
    assert _read_tree(storage.local_dir(uri, cache_root=tmp_path / "cache")) == content
    assert transfers.counts() == {"treeCacheHits": 1}
    # A local tree that is not what storage holds (another writer since) is not cached as it.
    (tmp_path / "src" / "config.json").write_bytes(b"{}")
    storage.cache_tree(tmp_path / "src", uri, cache_root=tmp_path / "c2")
    transfers.reset()
    assert _read_tree(storage.local_dir(uri, cache_root=tmp_path / "c2")) == content  # storage's, downloaded
    assert transfers.counts()["treesPulled"] == 1


def test_local_dir_uses_tao_cache_dir(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.write_text(f"s3://{s3_bucket}/m/a.txt", "a")
    monkeypatch.setenv("TAO_CACHE_DIR", str(tmp_path / "env-cache"))
    path = storage.local_dir(f"s3://{s3_bucket}/m")
    assert (tmp_path / "env-cache") in path.parents and (path / "a.txt").read_text() == "a"


# --------------------------------------------------------------------------- options


def test_configure_sets_the_endpoint(s3_server: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The environment points nowhere useful; only the configured endpoint can make this work.
    monkeypatch.delenv("TAO_S3_ENDPOINT_URL")
    monkeypatch.delenv("TAO_S3_PATH_STYLE")
    storage.configure(StorageOptions(endpoint_url=s3_server, region="us-east-1", path_style=True))
    uri = f"s3://{s3_bucket}/configured.txt"
    storage.write_text(uri, "via configure")
    assert storage.read_text(uri) == "via configure"
    assert storage.current_options().endpoint_url == s3_server


def test_unset_options_fall_back_to_the_environment(s3_server: str, s3_bucket: str) -> None:
    # What a stage CLI does when the job names no endpoint: the pod's TAO_S3_* variables apply.
    storage.configure(StorageOptions())
    assert storage.current_options() == StorageOptions(endpoint_url=s3_server, path_style=True)
    storage.write_text(f"s3://{s3_bucket}/env.txt", "via env")
    assert storage.exists(f"s3://{s3_bucket}/env.txt")


def test_boto3_endpoint_variable_is_honoured(
    s3_server: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TAO_S3_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    storage.configure(None)
    storage.write_text(f"s3://{s3_bucket}/aws-env.txt", "x")
    assert storage.list_uris(f"s3://{s3_bucket}") == [f"s3://{s3_bucket}/aws-env.txt"]


def test_storage_options_reject_unknown_fields() -> None:
    with pytest.raises(ValueError):
        StorageOptions.model_validate({"endpoint": "http://x"})


def test_errors_do_not_carry_credentials(s3_server: str, s3_bucket: str) -> None:
    with pytest.raises(FileNotFoundError) as info:
        storage.read_bytes(f"s3://{s3_bucket}/missing")
    assert "testing" not in str(info.value) and "testing" not in json.dumps(info.value.args)
