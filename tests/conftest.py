"""Shared fixtures: sample models, the real-world models in ../shared, and a CLI runner."""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from weightcli.cli import cli

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
REAL = ROOT.parent / "shared" / "real_models"

H5_SAMPLES = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".h5", ".keras"))
REAL_H5 = (
    sorted(p for p in REAL.glob("*/*") if p.suffix in (".h5", ".keras")) if REAL.is_dir() else []
)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)

    def lines(self) -> list[object]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


def run(*args: object) -> Result:
    """Run the CLI in-process, as a user would type it."""
    runner = CliRunner()
    res = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return Result(res.exit_code, res.stdout, res.stderr)


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


def extract_weights(path: Path, dest: Path) -> Path:
    """The HDF5 file holding a checkpoint's weights: the file itself, or a .keras member."""
    if zipfile.is_zipfile(path):
        out = dest / (path.name + ".weights.h5")
        with zipfile.ZipFile(path) as zf:
            out.write_bytes(zf.read("model.weights.h5"))
        return out
    return path
