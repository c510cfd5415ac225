"""``inspect``: list a checkpoint's tensors with metadata and (optionally) statistics."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weightcli import migrate
from weightcli.errors import ParameterError
from weightcli.results import JSON, InspectResult, TensorReport
from weightcli.select import Selection, apply
from weightcli.stats import tensor_stats
from weightcli.stores import Store, open_store, remote
from weightcli.stores.base import BLOCK_ELEMS, Block
from weightcli.stores.quantized import DequantizedStore, has_quantized

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

    def __post_init__(self) -> None:
        if self.fail_on_nonfinite and not self.with_stats:
            raise ParameterError("{fail_on_nonfinite} needs the statistics: drop {no_stats}")
        if self.block_elems < 1:
            raise ParameterError("{block_elems} must be at least 1")


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
        reports = []
        for t in chosen:
            stats = dequantized = digest = None
            hasher = TensorDigest() if request.digests and t.dtype != "string" else None
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
            reports.append(
                TensorReport(t, stats, dequantized, digest, distinct.count if distinct else None)
            )
        fetched = remote.fetched() - fetched_before if remote.is_url(store.path) else None
        return InspectResult(
            store.path, store.meta, reports, request.fail_on_nonfinite, fetched, _loads_in(store)
        )


def _loads_in(store: Store) -> JSON | None:
    """A full model's static "loads in" verdict (no framework imported)."""
    config = getattr(store, "model_config", None)
    if not store.meta.full_model or not isinstance(config, dict):
        return None
    return migrate.loads_in(
        config, store.meta.writer, store.meta.legacy_full_model, store.meta.history
    )
