"""Fixtures. Helpers shared by the tests are in helpers.py."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

# Tables are as wide as a CI log's (180 columns) in every worker: pytest-xdist's workers
# otherwise inherit a terminal width of 80 and squeeze tensor names.
os.environ["COLUMNS"] = "180"


@pytest.fixture
def tmp_copy(tmp_path: Path):
    """Copy a sample (file or directory) into tmp_path and return the copy's path."""

    def copy(src: Path) -> Path:
        dst = tmp_path / src.name
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copyfile(src, dst)
        return dst

    return copy


@pytest.fixture(scope="session")
def dask_scheduler():
    """A real Dask cluster on 127.0.0.1: a scheduler and 2 single-threaded worker
    processes (their nannies restart a worker that dies). Its scheduler address; the
    cluster is closed at the end of the session. No task is retried on a worker that
    died, as on the cluster weightcli starts itself."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _server(argv: list[str], ready: str, what: str, env_extra: dict[str, str] | None = None):
    """A server started as ``argv`` (``{port}`` filled with a free local port), waited
    for until ``ready`` (a path) answers; yields its endpoint; stopped at the end."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, *(a.format(port=port) for a in argv)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env_extra or {})},
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint + ready, timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the {what} did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def moto_server(env_extra: dict[str, str] | None = None):
    """moto's standalone S3 server on 127.0.0.1 (the server s3fs's own tests use)."""
    argv = ["-m", "moto.server", "-H", "127.0.0.1", "-p", "{port}"]
    return _server(argv, "/moto-api/", "moto server", env_extra)


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real S3-compatible server on 127.0.0.1 for the whole session; stopped at the end."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    """Point weightcli (and s3fs) at the moto server the standard way (AWS_* variables);
    a fresh bucket ``models`` holding the sample models. Yields an s3fs filesystem."""
    import uuid

    from weightcli.stores import remote

    for key, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv(remote.OPTIONS_ENV, raising=False)
    remote.forget()
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    bucket = f"models-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    root = Path(__file__).resolve().parent.parent / "sample_models"
    for name in ("mlp_keras3.h5", "mlp.keras", "mlp.weights.h5", "cnn_tfkeras.h5"):
        fs.put_file(str(root / name), f"{bucket}/m/{name}")
    for name in ("mlp_export", "mlp_ckpt", "mlp_sharded", "mlp_folder"):
        fs.put(str(root / name), f"{bucket}/m/{name}", recursive=True)
    fs.bucket = bucket
    yield fs
    remote.forget()


@pytest.fixture(scope="session")
def gcs_endpoint():
    """A Google Cloud Storage emulator (gcp-storage-emulator, in memory) on 127.0.0.1
    for the whole session, with a bucket ``models``; stopped at the end."""
    argv = ["-m", "gcp_storage_emulator", "start", "-H", "127.0.0.1", "--port", "{port}"]
    argv += ["--in-memory", "--default-bucket", "models", "--quiet"]
    with _server(argv, "/storage/v1/b/models", "GCS emulator") as endpoint:
        yield endpoint


@pytest.fixture
def gcs(gcs_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    """Point weightcli (and gcsfs) at the emulator the standard way
    (``STORAGE_EMULATOR_HOST``; anonymous credentials through ``--storage-option``'s
    variable); sample models below ``gs://models/<fresh>/``. Yields (gcsfs filesystem,
    that prefix). gcsfs's experimental zonal-bucket probe speaks gRPC, which the
    emulator lacks: it is turned off, leaving gcsfs's JSON API (what real GCS serves too)."""
    import json
    import uuid

    from weightcli.stores import remote

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    monkeypatch.setenv(remote.OPTIONS_ENV, json.dumps({"token": "anon"}))
    remote.forget()
    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()
    fs = gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True)
    prefix = f"models/{uuid.uuid4().hex[:8]}"
    root = Path(__file__).resolve().parent.parent / "sample_models"
    for name in ("mlp_keras3.h5", "mlp.keras"):
        fs.put_file(str(root / name), f"{prefix}/{name}")
    fs.put(str(root / "mlp_export"), f"{prefix}/mlp_export", recursive=True)
    yield fs, prefix
    remote.forget()
    gcsfs.GCSFileSystem.clear_instance_cache()
