"""``inspect``: list a checkpoint's tensors with metadata and (optionally) statistics."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weightcli import migrate
from weightcli.distribution import (
    EXACT_SIDE,
    WHOLE_ELEMS,
    GramSpectrum,
    Histogram,
    Solver,
    check_exact_side,
    helpers,
    kernel_spectrum,
    matrix_shape,
    power_spectral_norm,
    streamed_exact,
)
from weightcli.errors import ParameterError
from weightcli.results import JSON, InspectResult, TensorReport
from weightcli.select import Selection, apply
from weightcli.stats import tensor_stats
from weightcli.stores import Store, open_store, remote
from weightcli.stores.base import BLOCK_ELEMS, Block, split
from weightcli.stores.quantized import DequantizedStore, has_quantized
from weightcli.tensor import TensorInfo

__all__ = ["InspectRequest", "InspectResult", "TensorDigest", "run"]


class TensorDigest:
    """BLAKE3 of a tensor's logical value: its elements in C order, little-endian, as
    stored (no conversion of dtype), so the same tensor has the same digest in every
    format (an ``.h5``, its ``.keras``, a SavedModel, a ``.safetensors``). Blocks come
    in storage order, each one run of C-order elements, so hashing them in turn hashes
    the whole tensor."""

    def __init__(self) -> None:
        import blake3

        self.h = blake3.blake3()

    def through(
        self, blocks: Iterator[tuple[Block, np.ndarray]]
    ) -> Iterator[tuple[Block, np.ndarray]]:
        for block, values in blocks:
            little = values.astype(values.dtype.newbyteorder("<"), copy=False)
            self.h.update(np.ascontiguousarray(little).reshape(-1).view(np.uint8).data)
            yield block, values

    def hexdigest(self) -> str:
        return str(self.h.hexdigest())


@dataclass(frozen=True)
class InspectRequest:
    """What to show: which tensors, with statistics or not, and whether NaN/Inf fail."""

    selection: Selection = field(default_factory=lambda: Selection(floats_only=False))
    with_stats: bool = True
    fail_on_nonfinite: bool = False
    block_elems: int = BLOCK_ELEMS
    digests: bool = False  # each tensor's BLAKE3 (``tensor_digest``)
    # A second pass per tensor: its histogram (``distribution.BINS`` bins over its own
    # finite range; the sparkline and the report draw it) and, with ``spectral``, a 2-D
    # kernel's singular values (``distribution.SpectralFigures``) in the same pass.
    histograms: bool = False
    spectral: bool = False
    # Spectral figures are exact (every singular value, the effective rank) for kernels
    # whose smaller side is at most this; power iteration above it.
    exact_side: int = EXACT_SIDE

    def __post_init__(self) -> None:
        if self.fail_on_nonfinite and not self.with_stats:
            raise ParameterError("{fail_on_nonfinite} needs the statistics: drop {no_stats}")
        if self.block_elems < 1:
            raise ParameterError("{block_elems} must be at least 1")
        if (self.histograms or self.spectral) and not self.with_stats:
            raise ParameterError("histograms need the statistics: drop {no_stats}")
        check_exact_side(self.exact_side)
        if self.exact_side != EXACT_SIDE and not self.spectral:
            raise ParameterError("{exact_side} says how spectra are found: it needs {spectral}")


# Distinct values are counted up to this many (a quantized or clustered tensor's codes);
# a tensor whose first values already hold more is not counted further.
DISTINCT_MAX = 256
DISTINCT_SAMPLE = 4096


class DistinctValues:
    """How many distinct values a tensor holds, when at most ``DISTINCT_MAX`` (else
    None): counted on the blocks as the statistics read them."""

    def __init__(self) -> None:
        self.seen: set[float] | None = set()

    def through(
        self, blocks: Iterator[tuple[Block, np.ndarray]]
    ) -> Iterator[tuple[Block, np.ndarray]]:
        for block, values in blocks:
            if self.seen is not None:
                flat = values.reshape(-1)
                head = np.unique(flat[:DISTINCT_SAMPLE])  # most tensors stop here
                if head.size > DISTINCT_MAX:
                    self.seen = None
                else:
                    self.seen.update(np.unique(flat).tolist())
                    if len(self.seen) > DISTINCT_MAX:
                        self.seen = None
            yield block, values

    @property
    def count(self) -> int | None:
        return len(self.seen) if self.seen is not None else None


def run(request: InspectRequest, path: str | Path) -> InspectResult:
    """Tensors chosen by the selection (all of them when it names nothing), with
    statistics read block by block."""
    sel = request.selection
    fetched_before = remote.fetched()
    with open_store(path) as store:
        tensors = store.tensors()
        if sel.select or sel.exclude or sel.layer_types or sel.kinds:
            chosen = apply(tensors, sel, store.meta.has_config)
        else:
            chosen = [t for t in tensors if sel.include_optimizer or not t.optimizer]
        view = DequantizedStore(store) if has_quantized(store) else None
        deq = {t.name: t for t in view.tensors()} if view is not None else {}
        reports: list[TensorReport] = []
        solver = Solver(helpers(request.exact_side)) if request.spectral else None
        try:
            _read(store, chosen, request, view, deq, reports, solver)
            loads = _loads_in(store)  # while the solver's helpers finish
        finally:
            if solver is not None:
                solver.close()
        fetched = remote.fetched() - fetched_before if remote.is_url(store.path) else None
        return InspectResult(
            store.path, store.meta, reports, request.fail_on_nonfinite, fetched, loads
        )


def _read(
    store: Store,
    chosen: list[TensorInfo],
    request: InspectRequest,
    view: DequantizedStore | None,
    deq: dict[str, TensorInfo],
    reports: list[TensorReport],
    solver: Solver | None,
) -> None:
    """The first pass over each chosen tensor (statistics, digest, distinct values)
    and, for pictures, the second; reports appended in order (a kernel's spectral
    figures may still be on ``solver``'s threads when this returns)."""
    for t in chosen:
        stats = dequantized = digest = None
        hasher = TensorDigest() if request.digests and t.dtype != "string" else None
        whole = None
        if request.histograms and t.dtype != "string" and t.size <= WHOLE_ELEMS:
            # A small tensor is read whole, at once: its histogram and spectral figures
            # then need no second read, and its blocks are views (no copy).
            whole = _read_whole(store, t)
            blocks = _views(whole, t.shape, request.block_elems)
        else:
            blocks = store.blocks(t, request.block_elems)
        if hasher is not None:
            blocks = hasher.through(blocks)  # one pass: the digest and the statistics
        distinct = DistinctValues() if request.with_stats and t.dtype != "string" else None
        if distinct is not None:
            blocks = distinct.through(blocks)
        if request.with_stats and t.dtype != "string":
            stats = tensor_stats(blocks)
            if view is not None and t.name in view.dequantized:
                dequantized = tensor_stats(view.blocks(deq[t.name], request.block_elems))
        if hasher is not None:
            for _ in blocks:  # what the statistics did not read (--no-stats)
                pass
            digest = hasher.hexdigest()
        rep = TensorReport(t, stats, dequantized, digest, distinct.count if distinct else None)
        if request.histograms and stats is not None:
            _second_pass(store, t, rep, request, whole, solver)
        reports.append(rep)


def _read_whole(store: Store, t: TensorInfo) -> np.ndarray:
    """Every value of ``t``, in one read (a single block as big as the tensor)."""
    parts = [values.reshape(-1) for _, values in store.blocks(t, max(t.size, 1))]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _views(
    flat: np.ndarray, shape: tuple[int, ...], block_elems: int
) -> Iterator[tuple[Block, np.ndarray]]:
    """The blocks ``Store.blocks`` would give, as views of the tensor's values ``flat``."""
    for block in split(shape, block_elems):
        yield block, flat[block.first : block.first + block.size].reshape(block.shape)


def _second_pass(
    store: Store,
    t: TensorInfo,
    rep: TensorReport,
    request: InspectRequest,
    whole: np.ndarray | None,
    solver: Solver | None = None,
) -> None:
    """The histogram over the range the first pass found and, for a 2-D (or reshaped)
    float kernel, its spectral figures: from the gathered values of a small tensor, else
    one more pass over the file (power iteration: a few more)."""
    stats = rep.stats
    if stats is None or stats.min is None or stats.max is None:
        return  # no finite value to draw
    hist = Histogram(stats.min, stats.max, inside=not stats.nonfinite)
    shape = matrix_shape(t.shape) if request.spectral and t.is_float else None
    if shape is not None and stats.nonfinite:
        shape = None  # no spectrum with NaN/Inf in it
    if whole is not None:
        hist.update(whole)
        rep.histogram = hist
        if shape is not None:  # (finite: the statistics counted no NaN/Inf)
            w = whole.reshape(shape)
            if solver is None:
                rep.spectral = kernel_spectrum(w, True, request.exact_side)
            else:
                solver.submit(
                    w, lambda figures: setattr(rep, "spectral", figures), True, request.exact_side
                )
        return
    gram = (
        GramSpectrum(*shape)
        if shape is not None and streamed_exact(*shape, request.exact_side)
        else None
    )
    for _, values in store.blocks(t, request.block_elems):
        hist.update(values)
        if gram is not None:
            gram.update(values)
    rep.histogram = hist
    if gram is not None:
        rep.spectral = gram.result()
    elif shape is not None:
        mean, std = stats.mean or 0.0, stats.std or 0.0
        rep.spectral = power_spectral_norm(
            *shape,
            lambda: (v for _, v in store.blocks(t, request.block_elems)),
            stats.count * (std * std + mean * mean),
        )


def _loads_in(store: Store) -> JSON | None:
    """A full model's static "loads in" verdict (no framework imported)."""
    config = getattr(store, "model_config", None)
    if not store.meta.full_model or not isinstance(config, dict):
        return None
    return migrate.loads_in(
        config, store.meta.writer, store.meta.legacy_full_model, store.meta.history
    )
