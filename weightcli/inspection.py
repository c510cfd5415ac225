"""``inspect``: list a checkpoint's tensors with metadata and (optionally) statistics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from weightcli.select import Selection, apply
from weightcli.stats import TensorStats, tensor_stats
from weightcli.stores import Store
from weightcli.tensor import TensorInfo


@dataclass
class TensorReport:
    info: TensorInfo
    stats: TensorStats | None


@dataclass
class InspectResult:
    path: Path
    store_meta: object
    tensors: list[TensorReport]

    @property
    def nonfinite(self) -> int:
        return sum(t.stats.nonfinite for t in self.tensors if t.stats)


def inspect_store(store: Store, sel: Selection, with_stats: bool) -> InspectResult:
    """Tensors chosen by ``sel`` (all of them when it names nothing), with stats read block by block."""
    tensors = store.tensors()
    if sel.select or sel.exclude or sel.layer_types or sel.kinds:
        chosen = apply(tensors, sel, store.meta.has_config)
    else:
        chosen = [t for t in tensors if sel.include_optimizer or not t.optimizer]
    reports = []
    for t in chosen:
        stats = None
        if with_stats and t.dtype != "string":
            stats = tensor_stats(store.blocks(t))
        reports.append(TensorReport(t, stats))
    return InspectResult(store.path, store.meta, reports)
