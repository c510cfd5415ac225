"""Every command's model runs in a child process that the ``weightcli`` process
supervises: a file that crashes a native library costs one line and exit 2 (a batch
goes on), temporaries are removed, and per-model time and memory limits hold.

The crash is a real SIGSEGV in native code (a NULL read through ctypes), injected in
the store's reader or writer of files whose name says so, in a real ``weightcli``
process started through its entry point (``main``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from helpers import SAMPLES

PRELUDE = """
import ctypes, sys, time
import numpy as np
from weightcli.stores import hdf5

def segv():
    ctypes.string_at(0)  # SIGSEGV inside native code

tensors = hdf5.H5Store.tensors
def tensors_or_crash(self):
    if "crash" in self.path.name:
        segv()
    if "slow" in self.path.name:
        time.sleep(60)
    if "hog" in self.path.name:
        np.ones(3 << 30, dtype=np.uint8)  # 3 GiB
    return tensors(self)
hdf5.H5Store.tensors = tensors_or_crash

commit = hdf5.H5Patcher._commit
def commit_or_crash(self):
    if "crash" in self.out.name:
        segv()
    return commit(self)
hdf5.H5Patcher._commit = commit_or_crash

from weightcli.cli import main
main(sys.argv[1:])
"""


def weightcli(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PRELUDE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_native_crash_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = shutil.copyfile(SAMPLES / "mlp_keras3.h5", tmp_path / "crash.h5")
    res = weightcli("inspect", bad)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert str(bad) in lines[0] and "SIGSEGV" in lines[0] and "damaged" in lines[0]


def test_a_batch_goes_on_past_a_crashing_model(tmp_path: Path) -> None:
    for name in ("a.h5", "b_crash.h5", "c.h5"):
        shutil.copyfile(SAMPLES / "mlp_keras3.h5", tmp_path / name)
    res = weightcli("inspect", "-r", tmp_path, "-j", "1", "--json", "--no-stats")
    assert res.returncode == 2, res.stderr
    docs = [json.loads(line) for line in res.stdout.splitlines()]
    by_name = {Path(d["path"]).name: d for d in docs if "path" in d}
    assert by_name["a.h5"]["exit_code"] == 0 and by_name["c.h5"]["exit_code"] == 0
    assert by_name["b_crash.h5"]["exit_code"] == 2
    assert "SIGSEGV" in by_name["b_crash.h5"]["error"]
    assert docs[-1]["summary"]["models"] == 3


def test_a_writer_that_crashes_leaves_no_temporary(tmp_path: Path) -> None:
    src = shutil.copyfile(SAMPLES / "mlp_keras3.h5", tmp_path / "in.h5")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = weightcli("scale", src, "0.5", "-o", out_dir / "crash.h5")
    assert res.returncode == 2, res.stderr
    assert "SIGSEGV" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert list(out_dir.iterdir()) == []  # no output, no temporary
    # The premise: the same run without the crash writes its output there.
    res = weightcli("scale", src, "0.5", "-o", out_dir / "fine.h5")
    assert res.returncode == 0, res.stderr
    assert [p.name for p in out_dir.iterdir()] == ["fine.h5"]


def test_a_model_past_the_time_limit_is_stopped(tmp_path: Path) -> None:
    for name in ("a_slow.h5", "b.h5"):
        shutil.copyfile(SAMPLES / "mlp_keras3.h5", tmp_path / name)
    started = time.monotonic()
    res = weightcli(
        "--timeout", "2", "inspect", tmp_path / "a_slow.h5", tmp_path / "b.h5", "--json"
    )
    assert time.monotonic() - started < 30
    assert res.returncode == 2, res.stderr
    docs = [json.loads(line) for line in res.stdout.splitlines()]
    assert "time limit" in docs[0]["error"] and docs[1]["exit_code"] == 0


def test_a_model_past_the_memory_limit_fails_alone(tmp_path: Path) -> None:
    shutil.copyfile(SAMPLES / "mlp_keras3.h5", tmp_path / "hog.h5")
    res = weightcli("--max-memory", "1G", "inspect", tmp_path / "hog.h5")
    assert res.returncode == 2, res.stderr
    assert "memory" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_limits_are_refused_when_absurd() -> None:
    res = weightcli("--max-memory", "lots", "inspect", SAMPLES / "mlp.keras")
    assert res.returncode == 2 and "--max-memory" in res.stderr
    res = weightcli("--timeout", "-1", "inspect", SAMPLES / "mlp.keras")
    assert res.returncode == 2 and "--timeout" in res.stderr


def test_a_limit_that_cannot_hold_is_refused_not_ignored(
    tmp_path: Path, dask_scheduler: str
) -> None:
    """--timeout on a Dask cluster (whose workers this process does not supervise), or
    verify --trust-code with --no-load: errors, never options quietly ignored."""
    from helpers import run

    for name in ("a.h5", "b.h5"):
        shutil.copyfile(SAMPLES / "mlp_keras3.h5", tmp_path / name)
    res = run(
        "--timeout",
        "5",
        "inspect",
        "-r",
        tmp_path,
        "--executor",
        "dask",
        "--scheduler",
        dask_scheduler,
    )
    assert res.code == 2 and "--timeout" in res.err and "dask" in res.err
    res = run("verify", tmp_path / "a.h5", "--no-load", "--trust-code")
    assert res.code == 2 and "--trust-code" in res.err and "--no-load" in res.err
