"""Shared fixtures.

S3 is a real HTTP server (moto), never a mock of boto3: the same requests a pod makes reach it.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Every variable through which boto3 could find real credentials, profiles or endpoints.
_AWS_ENV_CLEARED = (
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "TAO_S3_REGION",
)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server on a free local port; yields its endpoint URL.

    For the whole session it also sets dummy credentials (and hides any real ones) and points
    ``TAO_S3_ENDPOINT_URL`` / ``TAO_S3_PATH_STYLE`` at the server, so stage CLIs started as
    subprocesses reach it too. Everything is restored at the end of the session.
    """
    from moto.server import ThreadedMotoServer

    from tao_trainer import storage

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    no_config = tmp_path_factory.mktemp("aws") / "absent"
    with pytest.MonkeyPatch.context() as env:
        for name in _AWS_ENV_CLEARED:
            env.delenv(name, raising=False)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        # No ~/.aws files and no instance-metadata probing (which would wait on a timeout).
        env.setenv("AWS_CONFIG_FILE", str(no_config))
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(no_config))
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        env.setenv("TAO_S3_ENDPOINT_URL", endpoint)
        env.setenv("TAO_S3_PATH_STYLE", "1")
        storage.configure(None)  # drop clients cached before the environment changed
        try:
            yield endpoint
        finally:
            storage.configure(None)
            server.stop()


@pytest.fixture(scope="session")
def s3_admin(s3_server: str) -> Any:
    """A plain boto3 S3 client on the moto server, for test setup that goes around tao_trainer.storage."""
    import boto3

    return boto3.session.Session().client("s3", endpoint_url=s3_server, region_name="us-east-1")


@pytest.fixture
def s3_bucket(s3_admin: Any) -> str:
    """A fresh, empty bucket on the moto server; returns its name."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_admin.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["file", "s3"])
def storage_root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A base URI for one test, on each scheme in turn: file:// under tmp_path, or s3:// in a new bucket."""
    if request.param == "file":
        return f"file://{tmp_path}/store"
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/store"


# --------------------------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random char-level causal LM in HF format (no download), shared by the session's tests."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def gate_champion(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model fine-tuned (TRL SFT) on gate_models' task until it answers ~87% of it right: a champion
    that genuinely worse challengers can be measured against (tests of the promotion gate).

    Trained in a child process: in this one, threads an earlier operator test left retrying (kopf's) mutate
    shared dicts (loggers, modules) while TRL's setup iterates them ("dictionary changed size during
    iteration" on a busy CI machine)."""
    out = tmp_path_factory.mktemp("models") / "gate-champion"
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); from gate_models import fine_tune; "
        "fine_tune(Path(sys.argv[2]), Path(sys.argv[3]), 'right', epochs=6)"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(tiny_model), str(out)],
        check=True,
        timeout=1800,
    )
    return out
