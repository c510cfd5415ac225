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
