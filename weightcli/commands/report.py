"""``report``: everything one HTML page shows of a checkpoint (or of a change against a
reference): inspect's figures with a histogram per tensor, a 2-D kernel's spectral
figures, the flags a person should see first and, with ``against``, diff's comparison
plus before/after histograms over shared bins. The page itself is ``weightcli.page``'s."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from weightcli.commands import diff as diff_cmd
from weightcli.commands import inspect
from weightcli.digest import total_size
from weightcli.distribution import (
    EXACT_SIDE,
    EXPLODING,
    Flag,
    Histogram,
    check_exact_side,
    peer_outliers,
)
from weightcli.errors import ParameterError
from weightcli.results import DiffStatus, Overlay, ReportResult, TensorReport
from weightcli.select import Selection
from weightcli.stats import tensor_stats
from weightcli.stores import Store, open_store, remote
from weightcli.stores.base import BLOCK_ELEMS
from weightcli.stores.quantized import compared_views

__all__ = ["ReportRequest", "ReportResult", "flags", "run"]

# Kinds that are weight matrices (a dead or exploding one is worth a flag); an all-zero
# bias or normalisation offset is what an untrained layer holds.
MATRIX_KINDS = {
    "kernel",
    "embeddings",
    "recurrent_kernel",
    "depthwise_kernel",
    "pointwise_kernel",
}


def _pairing() -> diff_cmd.DiffRequest:
    # a page shows what changed: a NaN left where it was did not
    return diff_cmd.DiffRequest(nan_equal=True)


@dataclass(frozen=True)
class ReportRequest:
    """Which tensors, and optionally the reference to compare with (``against``: any
    format). ``pairing`` is diff's own request, so every diff option reaches the page
    as it reaches ``diff`` (names through maps or by order, tolerances, NaN, dequantized
    or not, dtypes ignored or not); by default NaN at the same place is equal."""

    selection: Selection = field(default_factory=lambda: Selection(floats_only=False))
    against: str | Path | None = None
    pairing: diff_cmd.DiffRequest = field(default_factory=_pairing)
    block_elems: int = BLOCK_ELEMS
    # Exact spectra (every singular value, the effective rank) for kernels whose smaller
    # side is at most this; power iteration above it.
    exact_side: int = EXACT_SIDE

    def __post_init__(self) -> None:
        check_exact_side(self.exact_side)
        pairing = self.pairing
        if self.against is None and (pairing.maps or pairing.match_by != "name"):
            raise ParameterError("{map} and {match_by} pair tensors with {against}: give it")
        if pairing.structure:
            raise ParameterError(
                "the page draws values: a {structure} comparison reads none (drop one)"
            )


def run(request: ReportRequest, path: str | Path) -> ReportResult:
    figures = inspect.run(
        inspect.InspectRequest(
            selection=request.selection,
            histograms=True,
            spectral=True,
            block_elems=request.block_elems,
            exact_side=request.exact_side,
        ),
        path,
    )
    result = ReportResult(figures, _size(figures.path), flags(figures.tensors), request.exact_side)
    if request.against is not None:
        _compare(result, request)
    return result


def _size(path: Path) -> int | None:
    if remote.is_url(path):
        return None
    with contextlib.suppress(OSError):
        return total_size(path)
    return None


def flags(reports: list[TensorReport]) -> list[Flag]:
    """NaN/Inf, dead (all-zero) weight matrices, exploding kernels, and tensors far from
    their peers, worst first."""
    out: list[Flag] = []
    peers: dict[Any, list[tuple[str, float]]] = defaultdict(list)
    for rep in reports:
        t, st = rep.info, rep.stats
        for st_, what in ((st, ""), (rep.dequantized, " (dequantized)")):
            if st_ is not None and st_.nan:
                out.append(Flag("nan", t.name, f"{st_.nan:,} NaN of {t.size:,} values{what}"))
            if st_ is not None and st_.inf:
                out.append(Flag("inf", t.name, f"{st_.inf:,} Inf of {t.size:,} values{what}"))
        if st is None or t.optimizer or t.size == 0:
            continue
        matrix = t.kind in MATRIX_KINDS or len(t.shape) >= 2
        if matrix and st.zeros == st.count:
            out.append(Flag("dead", t.name, f"all {t.size:,} values are zero"))
        norm = rep.spectral.spectral_norm if rep.spectral is not None else None
        if matrix and t.is_float:
            big = [
                f"{what} {value:.3g}"
                for what, value in (("max |x|", st.abs_max), ("spectral norm", norm))
                if value is not None and value > EXPLODING
            ]
            if big:
                out.append(Flag("exploding", t.name, f"{' and '.join(big)} (above {EXPLODING:g})"))
        if matrix and t.is_float and st.std is not None and st.mean is not None:
            rms = (st.std * st.std + st.mean * st.mean) ** 0.5
            peers[(t.layer_class or "?", t.kind)].append((t.name, rms))
    out += peer_outliers(peers)
    order = {"nan": 0, "inf": 1, "dead": 2, "exploding": 3, "outlier": 4}
    return sorted(out, key=lambda f: order.get(f.kind, 9))


def _compare(result: ReportResult, request: ReportRequest) -> None:
    """Diff's metrics per matched tensor, and for each one that changed its values and
    the reference's as two histograms over the union of their ranges."""
    assert request.against is not None
    with open_store(result.figures.path) as sa, open_store(request.against) as sb:
        va, vb = compared_views(sa, sb, request.pairing.dequantize)
        pairing = replace(request.pairing, block_elems=request.block_elems)
        diff = diff_cmd.compare(pairing, va, vb)
        overlays = []
        for row in diff.rows:
            if row.status not in (DiffStatus.DIFFERS, DiffStatus.DTYPE):
                continue
            a, b = row.a, row.b
            if a is None or b is None or not (a.is_float and b.is_float) or a.shape != b.shape:
                continue
            sta = _range(va, a, request.block_elems)
            stb = _range(vb, b, request.block_elems)
            if sta is None or stb is None:
                continue
            lo, hi = min(sta[0], stb[0]), max(sta[1], stb[1])
            after = Histogram(lo, hi).add(va.blocks(a, request.block_elems))
            before = Histogram(lo, hi).add(vb.blocks(b, request.block_elems))
            overlays.append(Overlay(row.name, before, after))
        result.against = sb.path
        result.against_meta = sb.meta
        result.diff = diff
        result.overlays = overlays


def _range(store: Store, info: Any, block_elems: int) -> tuple[float, float] | None:
    st = tensor_stats(store.blocks(info, block_elems))
    if st.min is None or st.max is None:
        return None
    return st.min, st.max
