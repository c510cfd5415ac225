"""Streaming: results with tiny blocks (many passes, histogram percentiles) equal the
one-block results. Each test passes its block size explicitly and checks, from the
blocks the store really handed out, that it was used."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import run

import weightcli.stores.base as base
import weightcli.transforms.clip as clipmod
from weightcli.api import selection
from weightcli.commands import transform
from weightcli.params import OutputSpec
from weightcli.steps import ClipStep, PruneStep, QuantizeStep, ScaleStep, Step

TINY = 1000


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


@pytest.fixture
def block_sizes(monkeypatch) -> list[int]:
    """The size of every block any store hands out during the test (recorded, not changed)."""
    sizes: list[int] = []
    real = base.Store.blocks

    def blocks(self, info, max_elems=base.BLOCK_ELEMS, align=None) -> Iterator:
        for where, block in real(self, info, max_elems, align):
            sizes.append(block.size)
            yield where, block

    monkeypatch.setattr(base.Store, "blocks", blocks)
    return sizes


def transform_with(src: Path, out: Path, step: Step, block_elems: int) -> None:
    request = transform.TransformRequest(
        steps=(step,), command="test", block_elems=block_elems, out=OutputSpec(output=out)
    )
    transform.run(request, src)


SEL = selection()
STEPS = {
    "scale": lambda: ScaleStep(SEL, factor=1.5),
    "clip-sigma": lambda: ClipStep(SEL, sigma=2),
    "clip-abs": lambda: ClipStep(SEL, abs_max=1, nonfinite="zero"),
    "quantize-6": lambda: QuantizeStep(SEL, bits=6),
    "quantize-axis0": lambda: QuantizeStep(SEL, axis=0, scheme="asymmetric"),
    "quantize-axis2": lambda: QuantizeStep(selection(select=["conv/*", "pointwise/*"]), axis=2),
    "quantize-tensor": lambda: QuantizeStep(SEL, granularity="per-tensor"),
    "prune": lambda: PruneStep(SEL, sparsity=0.6),
    "prune-global": lambda: PruneStep(SEL, sparsity=0.6, scope="global"),
}


@pytest.mark.parametrize("name", STEPS)
def test_tiny_blocks_same_result(
    big: Path, tmp_path: Path, block_sizes: list[int], name: str
) -> None:
    one = tmp_path / "one.h5"
    transform_with(big, one, STEPS[name](), base.BLOCK_ELEMS)
    assert block_sizes and max(block_sizes) > TINY  # premise: whole tensors in one block
    block_sizes.clear()
    many = tmp_path / "many.h5"
    transform_with(big, many, STEPS[name](), TINY)
    # Premise: the tiny block size was used, and tensors really were split.
    assert max(block_sizes) <= TINY and len(block_sizes) > 4 * len(KEYS)
    with h5py.File(one) as a, h5py.File(many) as b:
        for k in KEYS:
            np.testing.assert_allclose(a[k][()], b[k][()], rtol=1e-6, atol=1e-6)


def test_histogram_percentile_close_to_exact(
    big: Path, tmp_path: Path, block_sizes: list[int], monkeypatch
) -> None:
    def bound(out: Path) -> float:
        with h5py.File(big) as f, h5py.File(out) as g:
            x, y = f["dense/kernel"][()], g["dense/kernel"][()]
        clipped = y != x
        return float(np.abs(y[clipped]).max())

    exact_out = tmp_path / "e.h5"
    transform_with(big, exact_out, ClipStep(selection(["dense"]), percentile=99), base.BLOCK_ELEMS)
    monkeypatch.setattr(clipmod, "EXACT_PERCENTILE_ELEMS", TINY)  # force the histogram route
    approx_out = tmp_path / "a.h5"
    transform_with(big, approx_out, ClipStep(selection(["dense"]), percentile=99), TINY)
    with h5py.File(big) as f:
        want = np.percentile(np.abs(f["dense/kernel"][()]), 99)
    exact, approx = bound(exact_out), bound(approx_out)
    assert exact == pytest.approx(want, rel=1e-6)
    assert approx == pytest.approx(want, rel=1e-3)
    # Premise: the second run streamed in tiny blocks and found its bound by histogram
    # (within one bin, not bit for bit the exact percentile).
    assert max(block_sizes[-(600 * 70 // TINY) :]) <= TINY
    assert approx != exact


@pytest.mark.parametrize("shape", [(1, 1, 1024, 600), (3, 3, 256, 512), (1, 700_000)])
def test_no_block_exceeds_the_budget(
    tmp_path: Path, block_sizes: list[int], shape: tuple[int, ...]
) -> None:
    """Tensors whose first axis is tiny (1x1 convolutions) are still read in bounded blocks."""
    p = tmp_path / "wide.h5"
    with h5py.File(p, "w") as f:
        f["conv/kernel"] = np.random.default_rng(0).normal(size=shape).astype("float32")
    assert run("scale", p, "2", "-o", tmp_path / "out.h5").code == 0
    assert run("quantize", p, "-o", tmp_path / "q.h5").code == 0
    assert len(block_sizes) > 2 and max(block_sizes) <= base.BLOCK_ELEMS
    with h5py.File(p) as a, h5py.File(tmp_path / "out.h5") as b:
        np.testing.assert_array_equal(b["conv/kernel"][()], a["conv/kernel"][()] * 2)


def test_split_never_materialises_an_index_list() -> None:
    """A declared shape far beyond memory is split lazily: the first blocks come at once."""
    blocks = base.split((2**31, 2**31))
    first = next(blocks)
    assert first.size <= base.BLOCK_ELEMS and first.first == 0
    nested = base.split((2**20, 2**20, 2**20, 4))
    assert next(nested).origin == (0, 0, 0, 0)
