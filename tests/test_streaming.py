"""Streaming: results with tiny blocks (many passes, histogram percentiles) equal the one-block results."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import run

import weightcli.pipeline as pipeline
import weightcli.steps as steps
import weightcli.stores.base as base


@pytest.fixture
def big(tmp_path: Path) -> Path:
    p = tmp_path / "big.h5"
    rng = np.random.default_rng(3)
    with h5py.File(p, "w") as f:
        f["dense/kernel"] = rng.standard_t(3, size=(600, 70)).astype("float32")
        f["emb/embeddings"] = rng.normal(size=(300, 16)).astype("float32")
        # With 1000-element blocks these split inside axis 2: blocks hold part of it.
        f["conv/kernel"] = rng.normal(size=(3, 4, 50, 30)).astype("float32")
        f["pointwise/kernel"] = rng.normal(size=(1, 1, 100, 40)).astype("float32")
    return p


KEYS = ("dense/kernel", "emb/embeddings", "conv/kernel", "pointwise/kernel")


def tiny_blocks(monkeypatch) -> None:
    monkeypatch.setattr(base, "BLOCK_ELEMS", 1000)
    monkeypatch.setattr(pipeline, "BLOCK_ELEMS", 1000)
    monkeypatch.setattr(steps, "EXACT_PERCENTILE_ELEMS", 1000)
    real = base.Store.blocks

    def blocks(self, info, max_elems=1000):
        return real(self, info, 1000)

    monkeypatch.setattr(base.Store, "blocks", blocks)


@pytest.mark.parametrize(
    "args",
    [
        ["scale", "1.5"],
        ["clip", "--sigma", "2"],
        ["clip", "--abs-max", "1", "--nonfinite", "zero"],
        ["quantize", "--bits", "6"],
        ["quantize", "--axis", "0", "--scheme", "asymmetric"],
        ["quantize", "--axis", "2", "--select", "conv/*", "--select", "pointwise/*"],
        ["quantize", "--granularity", "per-tensor"],
    ],
)
def test_tiny_blocks_same_result(big: Path, tmp_path: Path, monkeypatch, args: list[str]) -> None:
    one = tmp_path / "one.h5"
    assert run(args[0], big, *args[1:], "-o", one).code == 0
    tiny_blocks(monkeypatch)
    many = tmp_path / "many.h5"
    assert run(args[0], big, *args[1:], "-o", many).code == 0
    with h5py.File(one) as a, h5py.File(many) as b:
        for k in KEYS:
            np.testing.assert_allclose(a[k][()], b[k][()], rtol=1e-6, atol=1e-6)


def test_histogram_percentile_close_to_exact(big: Path, tmp_path: Path, monkeypatch) -> None:
    exact = run("clip", big, "--percentile", "99", "-o", tmp_path / "e.h5", "--json").json()
    tiny_blocks(monkeypatch)
    approx = run("clip", big, "--percentile", "99", "-o", tmp_path / "a.h5", "--json").json()
    with h5py.File(big) as f:
        want = np.percentile(np.abs(f["dense/kernel"][()]), 99)
    e = next(t for t in exact["tensors"] if t["name"] == "dense/kernel")["figures"][0]["max"]
    a = next(t for t in approx["tensors"] if t["name"] == "dense/kernel")["figures"][0]["max"]
    assert e == pytest.approx(want, rel=1e-9)
    assert a == pytest.approx(want, rel=1e-3)


@pytest.mark.parametrize("shape", [(1, 1, 1024, 600), (3, 3, 256, 512), (1, 700_000)])
def test_no_block_exceeds_the_budget(tmp_path: Path, monkeypatch, shape: tuple[int, ...]) -> None:
    """Tensors whose first axis is tiny (1x1 convolutions) are still read in bounded blocks."""
    p = tmp_path / "wide.h5"
    with h5py.File(p, "w") as f:
        f["conv/kernel"] = np.random.default_rng(0).normal(size=shape).astype("float32")
    sizes: list[int] = []
    real = base.Store.blocks

    def blocks(self, info, max_elems=base.BLOCK_ELEMS):
        for where, block in real(self, info, max_elems):
            sizes.append(block.size)
            yield where, block

    monkeypatch.setattr(base.Store, "blocks", blocks)
    assert run("scale", p, "2", "-o", tmp_path / "out.h5").code == 0
    assert run("quantize", p, "-o", tmp_path / "q.h5").code == 0
    assert len(sizes) > 2 and max(sizes) <= base.BLOCK_ELEMS
    with h5py.File(p) as a, h5py.File(tmp_path / "out.h5") as b:
        np.testing.assert_array_equal(b["conv/kernel"][()], a["conv/kernel"][()] * 2)
