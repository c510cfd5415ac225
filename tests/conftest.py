"""Fixtures. Helpers shared by the tests are in helpers.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


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
