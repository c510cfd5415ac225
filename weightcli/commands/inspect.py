"""``inspect``: list a checkpoint's tensors with metadata and (optionally) statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from weightcli.errors import ParameterError
from weightcli.results import InspectResult, TensorReport
from weightcli.select import Selection, apply
from weightcli.stats import tensor_stats
from weightcli.stores import open_store, remote
from weightcli.stores.base import BLOCK_ELEMS
from weightcli.stores.quantized import DequantizedStore, has_quantized

__all__ = ["InspectRequest", "InspectResult", "run"]


@dataclass(frozen=True)
class InspectRequest:
    """What to show: which tensors, with statistics or not, and whether NaN/Inf fail."""

    selection: Selection = field(default_factory=lambda: Selection(floats_only=False))
    with_stats: bool = True
    fail_on_nonfinite: bool = False
    block_elems: int = BLOCK_ELEMS

    def __post_init__(self) -> None:
        if self.fail_on_nonfinite and not self.with_stats:
            raise ParameterError("{fail_on_nonfinite} needs the statistics: drop {no_stats}")
        if self.block_elems < 1:
            raise ParameterError("{block_elems} must be at least 1")


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
        reports = []
        for t in chosen:
            stats = dequantized = None
            if request.with_stats and t.dtype != "string":
                stats = tensor_stats(store.blocks(t, request.block_elems))
                if view is not None and t.name in view.dequantized:
                    dequantized = tensor_stats(view.blocks(deq[t.name], request.block_elems))
            reports.append(TensorReport(t, stats, dequantized))
        fetched = remote.fetched() - fetched_before if remote.is_url(store.path) else None
        return InspectResult(store.path, store.meta, reports, request.fail_on_nonfinite, fetched)
