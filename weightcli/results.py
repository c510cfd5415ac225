"""What every command returns: typed results that own their JSON and their exit code.

These types are the JSON schema (the README documents the same fields). Every result
has ``exit_code`` (0 success, 1 a check failed) and ``to_json()`` (a dict with no
NaN/Inf: such numbers become null). Reports render them; nothing here prints.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from weightcli.distribution import EXACT_SIDE, Flag, Histogram, SpectralFigures
from weightcli.errors import ExitCode
from weightcli.figures import Figures
from weightcli.stats import TensorStats
from weightcli.stores.base import StoreMeta
from weightcli.tensor import TensorInfo

JSON = dict[str, Any]


class Result(Protocol):
    """What a command's ``run`` returns for one model (or one pair of models)."""

    @property
    def exit_code(self) -> int:
        """``ExitCode.OK`` when everything passed, ``CHECK_FAILED`` when a check failed
        (errors raise instead)."""
        ...

    def to_json(self) -> JSON:
        """The JSON object printed with ``--json`` (without ``path``/``exit_code``)."""
        ...

    def explain(self) -> str | None:
        """Why the exit code is not 0, in a few words (None when it is 0)."""
        ...


def finite_or_none(x: Any) -> Any:
    """JSON has no Infinity/NaN: such values become null (documented in the README)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite_or_none(v) for v in x]
    return x


def clean(doc: JSON) -> JSON:
    """``doc`` with NaN/Inf numbers as null (JSON has neither)."""
    out: JSON = finite_or_none(doc)
    return out


def name_list(items: list[str], limit: int = 5) -> str:
    """``a, b, c and 4 more``."""
    return ", ".join(items[:limit]) + (
        f" and {len(items) - limit} more" if len(items) > limit else ""
    )


# -- inspect ----------------------------------------------------------------------------------


@dataclass
class TensorReport:
    """One tensor of ``inspect``: its metadata and (unless ``--no-stats``) its statistics;
    for a natively quantized layer's int8 codes, also the dequantized weights' statistics."""

    info: TensorInfo
    stats: TensorStats | None
    dequantized: TensorStats | None = None
    blake3: str | None = None  # of its values (``inspect --digests``)
    distinct: int | None = None  # distinct values, when at most 256 (quantized, clustered)
    histogram: Histogram | None = None  # ``InspectRequest.histograms``
    spectral: SpectralFigures | None = None  # a 2-D (or reshaped) float kernel's


@dataclass
class InspectResult:
    """``inspect`` of one model. JSON: ``{"path", "format", "writer", "model_class",
    "model_name", "history", "tensors": [...], "totals"}``, and ``"bytes_fetched"``
    for a model in object storage."""

    path: Path
    meta: StoreMeta
    tensors: list[TensorReport]
    fail_on_nonfinite: bool = False
    bytes_fetched: int | None = None  # from object storage (a URL); None on disk
    # A full model's static verdict per Keras line (``migrate.loads_in``), or None.
    loads_in: JSON | None = None

    @property
    def nonfinite(self) -> int:
        # A quantized layer's codes are integers: its NaN/Inf show in the weights they
        # stand for (a zero or non-finite scale dequantizes to NaN/Inf).
        return sum(
            max(
                t.stats.nonfinite if t.stats else 0, t.dequantized.nonfinite if t.dequantized else 0
            )
            for t in self.tensors
        )

    @property
    def exit_code(self) -> int:
        return ExitCode.CHECK_FAILED if self.fail_on_nonfinite and self.nonfinite else ExitCode.OK

    def explain(self) -> str | None:
        return f"{self.nonfinite} NaN/Inf values" if self.exit_code else None

    def totals(self) -> JSON:
        by_dtype: dict[str, dict[str, int]] = defaultdict(
            lambda: {"tensors": 0, "params": 0, "bytes": 0}
        )
        for rep in self.tensors:
            d = by_dtype[rep.info.dtype]
            d["tensors"] += 1
            d["params"] += rep.info.size
            d["bytes"] += rep.info.nbytes
        return {
            "tensors": len(self.tensors),
            "params": sum(r.info.size for r in self.tensors),
            "bytes": sum(r.info.nbytes for r in self.tensors),
            "by_dtype": dict(by_dtype),
        }

    def to_json(self) -> JSON:
        tensors = []
        for rep in self.tensors:
            t = rep.info
            item: JSON = {
                "name": t.name,
                "path": t.path,
                "layer": t.layer,
                "layer_class": t.layer_class,
                "kind": t.kind,
                "dtype": t.dtype,
                "shape": list(t.shape),
                "params": t.size,
                "bytes": t.nbytes,
                "optimizer": t.optimizer,
            }
            if t.copies:
                item["copies"] = [t.path, *t.copies]
            if t.quantized:
                item["quantized"] = t.quantized
            if t.aliases:
                item["aliases"] = list(t.aliases)  # stored names that select it too
            if rep.stats is not None:
                item["stats"] = rep.stats.to_json()
            if rep.dequantized is not None:
                item["dequantized"] = rep.dequantized.to_json()
            if rep.blake3 is not None:
                item["blake3"] = rep.blake3
            if rep.distinct is not None:
                item["distinct"] = rep.distinct
            if rep.histogram is not None:
                item["histogram"] = rep.histogram.to_json()
            if rep.spectral is not None:
                item["spectral"] = rep.spectral.to_json()
            tensors.append(item)
        doc: JSON = {
            "path": str(self.path),
            "format": str(self.meta.format),
            "writer": self.meta.writer,
            "model_class": self.meta.model_class,
            "model_name": self.meta.model_name,
            # What the container says besides (a checkpoint's prefix, its shards, a note
            # on how it was read), as the table's header shows it.
            "details": self.meta.extra or None,
            "history": self.meta.history,
            "tensors": tensors,
            "totals": self.totals(),
        }
        if self.bytes_fetched is not None:
            doc["bytes_fetched"] = self.bytes_fetched
        if self.loads_in is not None:
            doc["loads_in"] = self.loads_in
        return clean(doc)


# -- report -----------------------------------------------------------------------------------


@dataclass
class Overlay:
    """A changed tensor's values before (the reference's) and after, in the same bins."""

    name: str
    before: Histogram
    after: Histogram

    def to_json(self) -> JSON:
        return {"name": self.name, "before": self.before.to_json(), "after": self.after.to_json()}


@dataclass
class ReportResult:
    """``report``: inspect's figures with histograms and spectral figures, the flags,
    the file's size, the cap on exact spectra they were found under (``exact_side``),
    and with ``--against`` diff's comparison and the overlays. JSON: ``{"path", "size",
    "flags", "exact_side", "inspect", "against", "diff", "overlays"}``; exit 0 (a
    picture checks nothing: ``inspect --fail-on-nonfinite`` and ``diff`` do)."""

    figures: InspectResult
    size: int | None
    flags: list[Flag]
    exact_side: int = EXACT_SIDE
    against: Path | None = None
    against_meta: StoreMeta | None = None
    diff: DiffResult | None = None
    overlays: list[Overlay] = field(default_factory=list)

    exit_code = ExitCode.OK

    @property
    def path(self) -> Path:
        return self.figures.path

    def explain(self) -> str | None:
        return None

    def to_json(self) -> JSON:
        return clean(
            {
                "path": str(self.path),
                "size": self.size,
                "flags": [f.to_json() for f in self.flags],
                "exact_side": self.exact_side,
                "inspect": self.figures.to_json(),
                "against": str(self.against) if self.against is not None else None,
                "diff": self.diff.to_json() if self.diff is not None else None,
                "overlays": [o.to_json() for o in self.overlays],
            }
        )


# -- transforms -------------------------------------------------------------------------------


@dataclass
class TensorChange:
    """One tensor a transform changed: statistics before and after, and the steps' figures."""

    info: TensorInfo
    out_dtype: str
    before: TensorStats
    after: TensorStats
    changed: int
    max_change: float
    figures: list[Figures]

    def to_json(self) -> JSON:
        def side(s: TensorStats) -> JSON:
            return {"mean": s.mean, "std": s.std, "abs_max": s.abs_max, "nan": s.nan, "inf": s.inf}

        return {
            "name": self.info.name,
            "shape": list(self.info.shape),
            "dtype": self.info.dtype,
            "out_dtype": self.out_dtype,
            "before": side(self.before),
            "after": side(self.after),
            "changed": self.changed,
            "changed_pct": 100.0 * self.changed / self.info.size if self.info.size else 0.0,
            "max_change": self.max_change,
            "figures": [f.to_json() for f in self.figures],
        }


@dataclass
class TransformResult:
    """A transform of one model. JSON: ``{"source", "output", "dry_run", "changed",
    "selected", "total", "bytes_written", "elapsed_s", "tensors": [...], "history"}``
    plus ``"untouched"`` (in place, nothing changed, nothing written) and ``"left_out"``.
    ``bytes_written`` counts the bytes the writer wrote itself (unchanged byte ranges
    copied in the kernel are not counted)."""

    source: Path
    output: Path | None
    changes: list[TensorChange]
    selected: int
    total_tensors: int
    bytes_written: int
    elapsed: float
    record: JSON = field(default_factory=dict)
    dry_run: bool = False
    left_out: list[str] = field(default_factory=list)
    # The checkpoint's size before and after (local outputs written with a dtype change:
    # a smaller dtype does not always make a smaller file).
    size_before: int | None = None
    size_after: int | None = None

    exit_code = ExitCode.OK

    def compared(self) -> tuple[Path, Path | None] | None:
        """What ``--report-html`` draws: the written file against its source (None
        when nothing was written)."""
        return (self.output, self.source) if self.output is not None else None

    @property
    def untouched(self) -> bool:
        """Written in place, but nothing changed: the source was left as it was."""
        return self.output is None and not self.dry_run

    def explain(self) -> str | None:
        return None

    def to_json(self) -> JSON:
        return clean(
            {
                "source": str(self.source),
                "output": str(self.output) if self.output else None,
                "dry_run": self.dry_run,
                "untouched": self.untouched,
                "changed": len(self.changes),
                "selected": self.selected,
                "total": self.total_tensors,
                "bytes_written": self.bytes_written,
                "elapsed_s": self.elapsed,
                "tensors": [c.to_json() for c in self.changes],
                "left_out": self.left_out,
                "size_before": self.size_before,
                "size_after": self.size_after,
                "history": self.record,
            }
        )


@dataclass
class LayerPlan:
    """One layer of ``scale --by-activation``: its statistic before and after, its factor."""

    layer: str
    layer_class: str
    activation: str | None
    stat_before: float | None = None
    factor: float = 1.0
    stat_after: float | None = None
    note: str = ""
    scaled: bool = False

    def to_json(self) -> JSON:
        return {
            "layer": self.layer,
            "layer_class": self.layer_class,
            "activation": self.activation,
            "stat_before": self.stat_before,
            "factor": self.factor if self.scaled else None,
            "stat_after": self.stat_after,
            "scaled": self.scaled,
            "note": self.note or None,
        }


@dataclass
class ActivationPlan:
    """The per-layer factors of ``scale --by-activation``."""

    target: float
    stat: str
    layers: list[LayerPlan] = field(default_factory=list)

    @property
    def factors(self) -> dict[str, float]:
        return {p.layer: p.factor for p in self.layers if p.scaled}


class Written:
    """A result that reports what was written and checks nothing: exit 0."""

    exit_code = ExitCode.OK

    def explain(self) -> str | None:
        return None


@dataclass
class ByActivationResult(Written):
    """``scale --by-activation``: the transform's JSON plus ``"activation": [...]``."""

    transform: TransformResult
    plan: ActivationPlan

    def compared(self) -> tuple[Path, Path | None] | None:
        return self.transform.compared()

    def to_json(self) -> JSON:
        return clean(
            {**self.transform.to_json(), "activation": [lp.to_json() for lp in self.plan.layers]}
        )


# -- transplant --------------------------------------------------------------------------


class Received(StrEnum):
    """What one TARGET tensor of ``transplant`` received."""

    COPIED = "copied"
    KEPT = "kept"  # no SOURCE tensor for it: TARGET's own values stay
    SKIPPED = "skipped"  # a SOURCE tensor of another shape: TARGET's own values stay


@dataclass
class TransplantRow:
    """One TARGET tensor: what it received (``received``, ``how``: ``name``, ``rename`` or
    ``order``; ``why`` it did not) and from which SOURCE tensor. ``status`` is the line
    shown and written to JSON (``copied via rename``, ``skipped: shape (3,) vs (4,)``)."""

    target: str
    received: Received
    source: str | None = None
    detail: str = ""
    max_change: float | None = None
    how: str = "name"
    why: str = ""

    @property
    def status(self) -> str:
        if self.received == Received.COPIED:
            return "copied" if self.how == "name" else f"copied via {self.how}"
        return f"{self.received}: {self.why}" if self.why else str(self.received)

    def to_json(self) -> JSON:
        return {
            "target": self.target,
            "status": self.status,
            "source": self.source,
            "detail": self.detail or None,
            "max_change": self.max_change,
        }


@dataclass
class TransplantResult:
    """``transplant``: per TARGET tensor its status, then SOURCE tensors left unused.
    JSON: ``{"source", "target", "output", "dry_run", "match_by", "tensors": [...],
    "unused": [...], "warnings": [...], "counts", "transform"}``. Exit 1 with ``strict``
    when a selected TARGET tensor received nothing or a SOURCE tensor was not used."""

    source: str
    target: str
    match_by: str
    rows: list[TransplantRow]
    unused: list[str]
    warnings: list[str]
    transform: TransformResult
    strict: bool = False

    def compared(self) -> tuple[Path, Path | None] | None:
        return self.transform.compared()

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            key = str(r.received)
            out[key] = out.get(key, 0) + 1
        out["unused source"] = len(self.unused)
        return out

    @property
    def incomplete(self) -> bool:
        return bool(self.unused) or any(r.received != Received.COPIED for r in self.rows)

    @property
    def exit_code(self) -> int:
        return ExitCode.CHECK_FAILED if self.strict and self.incomplete else ExitCode.OK

    def explain(self) -> str | None:
        if not self.exit_code:
            return None
        kept = sum(r.received != Received.COPIED for r in self.rows)
        return f"--strict: {kept} target tensors received nothing, {len(self.unused)} source tensors unused"

    def to_json(self) -> JSON:
        return clean(
            {
                "source": self.source,
                "target": self.target,
                "output": str(self.transform.output) if self.transform.output else None,
                "dry_run": self.transform.dry_run,
                "match_by": self.match_by,
                "tensors": [r.to_json() for r in self.rows],
                "unused": self.unused,
                "warnings": self.warnings,
                "counts": self.counts,
                "transform": self.transform.to_json(),
            }
        )


# -- freeze -----------------------------------------------------------------------------------


@dataclass
class FreezeResult(Written):
    """``freeze``: JSON ``{"source", "output", "layers": [{"layer", "trainable_before",
    "trainable"}]}``."""

    source: str
    output: str | None
    layers: list[tuple[str, bool, bool]]

    def compared(self) -> tuple[Path, Path | None] | None:
        """What ``--report-html`` draws: the written file and what it was made from."""
        return (Path(self.output), Path(self.source)) if self.output else None

    def to_json(self) -> JSON:
        return {
            "source": self.source,
            "output": self.output,
            "dry_run": self.output is None,
            "layers": [
                {"layer": p, "trainable_before": b, "trainable": a} for p, b, a in self.layers
            ],
        }


@dataclass
class StripRow:
    """One weight of an unwrapped layer: the wrapper, the plain layer, the wrapper's kind
    (prune, cluster, quantize), the weight, and how its value was made."""

    wrapper: str
    layer: str
    kind: str
    weight: str
    how: str


@dataclass
class StripResult(Written):
    """``strip``: JSON ``{"source", "output", "dry_run", "weights": [{"wrapper", "layer",
    "kind", "weight", "how"}], "removed_layers", "dropped", "optimizer_dropped",
    "bytes_written"}``."""

    source: str
    output: str | None
    rows: list[StripRow]
    removed_layers: list[str]
    dropped: list[str]
    optimizer_dropped: bool
    bytes_written: int

    def compared(self) -> tuple[Path, Path | None] | None:
        """What ``--report-html`` draws: the written file and what it was made from."""
        return (Path(self.output), Path(self.source)) if self.output else None

    def to_json(self) -> JSON:
        return {
            "source": self.source,
            "output": self.output,
            "dry_run": self.output is None,
            "weights": [
                {
                    "wrapper": r.wrapper,
                    "layer": r.layer,
                    "kind": r.kind,
                    "weight": r.weight,
                    "how": r.how,
                }
                for r in self.rows
            ],
            "removed_layers": self.removed_layers,
            "dropped": self.dropped,
            "optimizer_dropped": self.optimizer_dropped,
            "bytes_written": self.bytes_written,
        }


# -- migrate ------------------------------------------------------------------------------


@dataclass
class MigrateResult:
    """``migrate``: JSON ``{"source", "output", "dry_run", "from", "for", "changes":
    [{"layer", "key", "old", "new", "rule"}], "tensors_carried", "optimizer",
    "dropped", "check"}``. Exit 1 when ``check`` ran and failed."""

    source: str
    output: str | None
    line: str | None  # the Keras line that wrote the source
    target: str
    changes: list[JSON]
    tensors_carried: int
    optimizer: list[str]  # the optimizer state's tensors in the source
    check: Check | None = None
    dropped: list[str] = field(default_factory=list)  # training state not carried

    def compared(self) -> tuple[Path, Path | None] | None:
        """What ``--report-html`` draws: the written file and what it was made from."""
        return (Path(self.output), Path(self.source)) if self.output else None

    @property
    def exit_code(self) -> ExitCode:
        if self.check is not None and self.check.status == CheckStatus.FAIL:
            return ExitCode.CHECK_FAILED
        return ExitCode.OK

    def explain(self) -> str | None:
        if self.exit_code == ExitCode.CHECK_FAILED and self.check is not None:
            return f"{self.source}: {self.check.detail}"
        return None

    def to_json(self) -> JSON:
        return {
            "source": self.source,
            "output": self.output,
            "dry_run": self.output is None,
            "from": self.line,
            "for": self.target,
            "changes": self.changes,
            "tensors_carried": self.tensors_carried,
            "optimizer": self.optimizer,
            "dropped": self.dropped,
            "check": self.check.to_json() if self.check is not None else None,
        }


# -- lora extract -----------------------------------------------------------------------------


@dataclass
class LoraKernel:
    """One kernel factored into the adapter: the layer's index and name, the tensor, its
    shape, the share of its difference's energy kept, and the largest error left."""

    index: int
    layer: str
    tensor: str
    shape: list[int]
    energy: float
    max_error: float


@dataclass
class LoraExtractResult(Written):
    """``lora extract``: JSON ``{"source", "output", "rank", "kernels": [{"index",
    "layer", "tensor", "shape", "energy", "max_error"}], "target_layer_names",
    "not_carried", "bytes_written"}``."""

    source: str
    output: str
    rank: int
    kernels: list[LoraKernel]
    not_carried: list[str]
    bytes_written: int

    def compared(self) -> tuple[Path, Path | None] | None:
        """An adapter has no counterpart: its page draws it alone."""
        return Path(self.output), None

    @property
    def target_layer_names(self) -> list[str]:
        """What to pass to KerasHub's ``enable_lora(rank, target_layer_names=...)``."""
        return sorted({k.layer for k in self.kernels})

    def to_json(self) -> JSON:
        return {
            "source": self.source,
            "output": self.output,
            "rank": self.rank,
            "kernels": [
                {
                    "index": k.index,
                    "layer": k.layer,
                    "tensor": k.tensor,
                    "shape": k.shape,
                    "energy": k.energy,
                    "max_error": k.max_error,
                }
                for k in self.kernels
            ],
            "target_layer_names": self.target_layer_names,
            "not_carried": self.not_carried,
            "bytes_written": self.bytes_written,
        }


# -- dump -------------------------------------------------------------------------------------


@dataclass
class ExportRow:
    """One exported tensor: its Keras name and shape, the names and shapes it was written
    as, and the layout rule applied."""

    name: str
    written: list[str]
    shape: tuple[int, ...]
    shapes: list[tuple[int, ...]]
    rule: str


@dataclass
class ExportResult(Written):
    """``export``: JSON ``{"source", "output", "to", "layout", "check", "tensors":
    [{"name", "shape", "written": [{"name", "shape"}], "rule"}], "bytes_written",
    "elapsed_s"}``; exit 1 when ``--check`` failed."""

    source: str
    output: str
    to: str
    layout: str
    rows: list[ExportRow]
    bytes_written: int
    elapsed: float
    check: Check | None = None  # ``--check`` of a converted format

    @property
    def exit_code(self) -> ExitCode:  # type: ignore[override]
        failed = self.check is not None and self.check.status == CheckStatus.FAIL
        return ExitCode.CHECK_FAILED if failed else ExitCode.OK

    def explain(self) -> str | None:
        return self.check.detail if self.exit_code and self.check else None

    def compared(self) -> tuple[Path, Path | None] | None:
        """What ``--report-html`` draws: the written file and what it was made from."""
        return (Path(self.output), Path(self.source)) if self.output else None

    def to_json(self) -> JSON:
        return clean(
            {
                "source": self.source,
                "output": self.output,
                "to": self.to,
                "layout": self.layout,
                "check": self.check.to_json() if self.check else None,
                "tensors": [
                    {
                        "name": r.name,
                        "shape": list(r.shape),
                        "written": [
                            {"name": n, "shape": list(s)}
                            for n, s in zip(r.written, r.shapes, strict=True)
                        ],
                        "rule": r.rule,
                    }
                    for r in self.rows
                ],
                "bytes_written": self.bytes_written,
                "elapsed_s": self.elapsed,
            }
        )


@dataclass
class DumpResult(Written):
    """``dump``: JSON ``{"source", "output", "format", "tensors": [{"name", "shape",
    "dtype", "bytes"}], "bytes"}``."""

    source: str
    output: str
    layout: str
    tensors: list[TensorInfo]
    elapsed: float

    def to_json(self) -> JSON:
        return clean(
            {
                "source": self.source,
                "output": self.output,
                "format": self.layout,
                "tensors": [
                    {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "bytes": t.nbytes}
                    for t in self.tensors
                ],
                "bytes": sum(t.nbytes for t in self.tensors),
                "elapsed_s": self.elapsed,
            }
        )


# -- diff -------------------------------------------------------------------------------------


class DiffStatus(StrEnum):
    """How a tensor of A compares with B's."""

    SHAPE = "shape differs"
    DTYPE = "dtype differs"
    DIFFERS = "differs"
    ONLY_A = "only in A"
    ONLY_B = "only in B"
    WITHIN = "within tolerance"
    IDENTICAL = "identical"


EQUAL_STATUSES = {DiffStatus.IDENTICAL, DiffStatus.WITHIN}
# Table order: the worst first.
ORDER = list(DiffStatus)


@dataclass
class TensorDiff:
    """One matched name of ``diff``: status and difference metrics over finite pairs."""

    name: str
    status: DiffStatus
    a: TensorInfo | None
    b: TensorInfo | None
    max_abs: float | None = None
    mean_abs: float | None = None
    rel_l2: float | None = None
    cosine: float | None = None
    beyond: int | None = None
    size: int = 0
    # (exact zeros in B - in A) / elements: what pruning did (None: values not compared)
    sparsity_change: float | None = None

    @property
    def beyond_pct(self) -> float | None:
        if self.beyond is None or not self.size:
            return None
        return 100.0 * self.beyond / self.size

    def to_json(self) -> JSON:
        def side(t: TensorInfo | None) -> JSON | None:
            return {"path": t.path, "shape": list(t.shape), "dtype": t.dtype} if t else None

        return {
            "name": self.name,
            "status": str(self.status),
            "a": side(self.a),
            "b": side(self.b),
            "max_abs": self.max_abs,
            "mean_abs": self.mean_abs,
            "rel_l2": self.rel_l2,
            "cosine": self.cosine,
            "beyond": self.beyond,
            "beyond_pct": self.beyond_pct,
            "sparsity_change": self.sparsity_change,
        }


@dataclass
class DiffResult:
    """``diff`` of two checkpoints. JSON: ``{"a", "b", "equal", "verdict", "atol", "rtol",
    "nan_equal", "structure", "counts", "tensors": [...]}``; exit 1 unless equal."""

    a: str
    b: str
    atol: float
    rtol: float
    nan_equal: bool
    structure: bool
    rows: list[TensorDiff] = field(default_factory=list)
    ignore_dtype: bool = False  # values compared after casting; a dtype change alone is equal

    def compared(self) -> tuple[Path, Path | None]:
        """``diff --html``: A drawn against B, the reference."""
        return Path(self.a), Path(self.b)

    @property
    def equal(self) -> bool:
        return all(r.status in EQUAL_STATUSES for r in self.rows)

    def __bool__(self) -> bool:
        return self.equal

    @property
    def exit_code(self) -> int:
        return ExitCode.OK if self.equal else ExitCode.CHECK_FAILED

    def explain(self) -> str | None:
        return None  # the verdict line says it

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[str(r.status)] = out.get(str(r.status), 0) + 1
        return out

    @property
    def verdict(self) -> str:
        counts = self.counts()
        total = len(self.rows)
        tol = (
            "exact"
            if self.atol == 0 and self.rtol == 0
            else f"atol {self.atol:g}, rtol {self.rtol:g}"
        )
        what = "structure" if self.structure else tol
        recast = sum(
            r.a is not None and r.b is not None and r.a.dtype != r.b.dtype for r in self.rows
        )
        if self.ignore_dtype and recast:
            what += f"; dtypes ignored: {recast} tensors compared across dtypes"
        detail = ", ".join(f"{n} {s}" for s, n in counts.items())
        if self.equal:
            return f"EQUAL: {total} tensors ({detail}; {what})"
        bad = sum(n for s, n in counts.items() if s not in EQUAL_STATUSES)
        return f"DIFFERENT: {bad} of {total} tensors differ ({detail}; {what})"

    def to_json(self) -> JSON:
        return clean(
            {
                "a": self.a,
                "b": self.b,
                "equal": self.equal,
                "verdict": self.verdict,
                "atol": self.atol,
                "rtol": self.rtol,
                "nan_equal": self.nan_equal,
                "structure": self.structure,
                "ignore_dtype": self.ignore_dtype or None,
                "counts": self.counts(),
                "tensors": [r.to_json() for r in self.rows],
            }
        )


# -- verify -----------------------------------------------------------------------------------


class CheckStatus(StrEnum):
    """The outcome of one ``verify`` check."""

    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass
class Check:
    """One ``verify`` check: its name, status, one detail line and data for JSON."""

    name: str
    status: CheckStatus
    detail: str
    data: JSON = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {
            "name": self.name,
            "status": str(self.status),
            "detail": self.detail,
            **({"data": self.data} if self.data else {}),
        }


@dataclass
class VerifyResult:
    """``verify`` of one checkpoint. JSON: ``{"path", "ok", "checks": [...]}``; exit 1
    when a check failed."""

    path: str
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(c.status == CheckStatus.FAIL for c in self.checks)

    def __bool__(self) -> bool:
        return not self.failed

    @property
    def exit_code(self) -> int:
        return ExitCode.CHECK_FAILED if self.failed else ExitCode.OK

    def explain(self) -> str | None:
        return None  # the report's verdict line says it

    def to_json(self) -> JSON:
        return clean(
            {"path": self.path, "ok": not self.failed, "checks": [c.to_json() for c in self.checks]}
        )
