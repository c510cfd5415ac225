"""Names that come from a file never become paths outside OUT (hostile input, round two)."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest
from helpers import SAMPLES, run

from weightcli.errors import UnsupportedError
from weightcli.stores.output import inside


def _renamed(tmp_path: Path, name: str) -> Path:
    """mlp.weights.h5 whose first layer's recorded name is ``name``."""
    path = tmp_path / "in" / "evil.weights.h5"
    path.parent.mkdir()
    shutil.copyfile(SAMPLES / "mlp.weights.h5", path)
    with h5py.File(path, "r+") as f:
        f["layers/dense/vars"].attrs["name"] = name
    return path


@pytest.mark.parametrize(
    "name", ["../../ESCAPED", "/tmp/weightcli-abs-escape", "a/./b", "a//b", "back\\slash"]
)
@pytest.mark.parametrize("layout", ["npy-dir", "npz"])
def test_dump_refuses_a_name_that_would_leave_out(tmp_path: Path, name: str, layout: str) -> None:
    src = _renamed(tmp_path, name)
    out = tmp_path / "deep" / "out"
    out.parent.mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    res = run("dump", src, "-o", out, "--format", layout)
    assert res.code == 2, res.out + res.err
    assert "refused" in res.err and len(res.err.strip().splitlines()) == 1
    # Nothing written anywhere: not below tmp_path, not at the absolute name.
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not Path("/tmp/weightcli-abs-escape.npy").exists()
    assert not Path("/tmp/weightcli-abs-escape").exists()


def test_dump_of_ordinary_names_still_writes_nested_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run("dump", SAMPLES / "mlp.weights.h5", "-o", out, "--format", "npy-dir")
    assert res.code == 0, res.err
    assert (out / "dense_1" / "kernel.npy").is_file()


def test_the_gate_refuses_a_link_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(UnsupportedError):
        inside(root, "link/x.npy")
    for bad in ["", "..", "../x", "/etc/passwd", "a/../../b", "a\0b"]:
        with pytest.raises(UnsupportedError):
            inside(root, bad)
    assert inside(root, "a/b/c.npy") == root / "a" / "b" / "c.npy"
