"""``diff``: compare two checkpoints tensor by tensor, or two directories of them pair by
pair (models matched by their path relative to each directory)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from weightcli.batch import Item, discover
from weightcli.compare import check_tolerances, diff_stores, parse_map
from weightcli.errors import ParameterError
from weightcli.results import JSON, DiffResult
from weightcli.select import Selection
from weightcli.stores import Store, open_store
from weightcli.stores.base import BLOCK_ELEMS
from weightcli.stores.quantized import compared_views

__all__ = ["DiffRequest", "DiffResult", "UnpairedResult", "pair_items", "run"]


@dataclass(frozen=True)
class DiffRequest:
    """Which tensors, how A's names map onto B's, and the tolerances (numpy's meaning).
    ``dequantize`` compares natively quantized layers by their dequantized weights
    (codes / scale; by default when either side has such layers)."""

    selection: Selection = field(default_factory=lambda: Selection(floats_only=False))
    maps: tuple[str, ...] = ()
    atol: float = 0.0
    rtol: float = 0.0
    nan_equal: bool = False
    structure: bool = False
    block_elems: int = BLOCK_ELEMS
    dequantize: bool | None = None  # None: when either side holds quantized layers
    # Compare values after casting: a float16 export within tolerance is equal.
    ignore_dtype: bool = False
    match_by: str = "name"  # or "order": the i-th tensor of A with B's i-th (model order)

    def __post_init__(self) -> None:
        check_tolerances(self.atol, self.rtol)
        if self.match_by not in ("name", "order"):
            raise ParameterError("{match_by} must be name or order")
        if self.match_by == "order" and self.maps:
            raise ParameterError("{match_by} order pairs by position: give no {map}")
        for m in self.maps:
            parse_map(m)


@dataclass
class UnpairedResult:
    """A model found below only one of two directories: a difference (exit 1)."""

    path: str
    side: str  # "A" or "B"

    exit_code = 1

    def explain(self) -> str | None:
        return None

    @property
    def verdict(self) -> str:
        return f"DIFFERENT: only in {self.side}"

    def to_json(self) -> JSON:
        a, b = (self.path, None) if self.side == "A" else (None, self.path)
        return {"a": a, "b": b, "equal": False, "verdict": self.verdict}


def pair_items(a_dir: Path, b_dir: Path) -> list[Item]:
    """The models below both directories, paired by relative path (``other`` set), then
    those below one only (``other`` None; their ``root`` says which side)."""
    a_items = {it.relative: it for it in discover([str(a_dir)], True)}
    b_items = {it.relative: it for it in discover([str(b_dir)], True)}
    out = [
        Item(it.path, it.root, b_items[rel].path) for rel, it in a_items.items() if rel in b_items
    ]
    out += [it for rel, it in a_items.items() if rel not in b_items]
    out += [it for rel, it in b_items.items() if rel not in a_items]
    return out


def run(request: DiffRequest, a: str | Path, b: str | Path) -> DiffResult:
    """Compare every selected tensor of A with B's tensor of the same (mapped) name."""
    with open_store(a) as sa, open_store(b) as sb:
        return compare(request, *compared_views(sa, sb, request.dequantize))


def compare(request: DiffRequest, va: Store, vb: Store) -> DiffResult:
    """The request's comparison of two open stores (or their views)."""
    return diff_stores(
        va,
        vb,
        request.selection,
        [parse_map(m) for m in request.maps],
        atol=request.atol,
        rtol=request.rtol,
        nan_equal=request.nan_equal,
        structure=request.structure,
        block_elems=request.block_elems,
        ignore_dtype=request.ignore_dtype,
        match_by=request.match_by,
    )


def pair_task(request: DiffRequest, a_root: Path, item: Item) -> DiffResult | UnpairedResult:
    """One item of :func:`pair_items`: its diff, or the model missing on the other side."""
    if item.other is None:
        return UnpairedResult(str(item.path), "A" if item.root == a_root else "B")
    return run(request, item.path, item.other)
