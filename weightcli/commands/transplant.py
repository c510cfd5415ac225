"""``transplant``: move weights from SOURCE into a copy of TARGET, in TARGET's format,
through the same surgery writer as every transform (only the tensors that receive new
values are rewritten; TARGET's config, graph and optimizer state stay as they were).

Matching: by canonical name, after ``maps`` rename SOURCE's names (``diff --map``'s
rules); or, with ``match_by="order"``, the i-th selected weight of SOURCE with the i-th
of TARGET, both in model order (a rebuilt model whose generated names shifted). A pair
whose shapes differ is skipped and reported, never reshaped; values are cast to
TARGET's dtype (a float into an integer tensor is refused).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from weightcli import layouts, pipeline
from weightcli.compare import parse_map, rename
from weightcli.digest import digest
from weightcli.errors import ParameterError, UsageError, literal
from weightcli.figures import CopyFigures, Figures
from weightcli.params import OutputSpec
from weightcli.results import Received, TransplantResult, TransplantRow
from weightcli.select import Selection, match
from weightcli.steps import Step, TensorOp
from weightcli.stores import open_store
from weightcli.stores.base import Block, Store
from weightcli.stores.naming import walk_config
from weightcli.stores.remote import as_path
from weightcli.tensor import TensorInfo

__all__ = ["TransplantRequest", "TransplantResult", "run"]

LOSSY = {("float32", "float16"), ("float32", "bfloat16"), ("float64", "float32"),
         ("float64", "float16"), ("float64", "bfloat16"), ("float16", "bfloat16"),
         ("bfloat16", "float16")}  # fmt: skip


@dataclass(frozen=True)
class TransplantRequest:
    """SOURCE, how its tensors are matched to TARGET's, and where the output goes."""

    source: Path
    selection: Selection = field(default_factory=lambda: Selection(floats_only=False))
    source_select: tuple[str, ...] = ()
    maps: tuple[str, ...] = ()
    match_by: str = "name"
    strict: bool = False
    include_optimizer: bool = False
    from_ema: bool = False
    # "torch": SOURCE holds PyTorch's layouts and names (``weightcli.layouts``).
    layout: str = "keras"
    out: OutputSpec = field(default_factory=OutputSpec)

    def __post_init__(self) -> None:
        if self.match_by not in ("name", "order"):
            raise ParameterError("{match_by} must be name or order")
        if self.layout not in ("keras", "torch"):
            raise ParameterError(f"{{layout}} must be keras or torch, got {literal(self.layout)}")
        if self.match_by == "order" and self.maps:
            raise ParameterError("{match_by} order pairs by position: give no {map}")
        for m in self.maps:
            parse_map(m)
        if self.from_ema and self.include_optimizer:
            raise ParameterError(
                "{from_ema} takes the weights from the optimizer's averages: give no {include_optimizer}"
            )


class _CopyOp(TensorOp):
    def __init__(self, info: TensorInfo, source: Store, src: TensorInfo, how: str) -> None:
        super().__init__(info)
        self.source, self.src, self.how = source, src, how

    def apply(self, where: Block, block: np.ndarray, count: bool = True) -> np.ndarray:
        data = self.source.read(self.src, where)
        return np.asarray(data).astype(block.dtype, copy=False).reshape(block.shape)

    def figures(self) -> Figures:
        return CopyFigures(self.src.name, self.how)


class _LayoutOp(TensorOp):
    """A TARGET tensor made of SOURCE's PyTorch tensors by a layout rule: read whole,
    converted once (one tensor in memory at a time), then handed out block by block."""

    def __init__(
        self, info: TensorInfo, source: Store, srcs: list[TensorInfo], rule: layouts.Rule
    ) -> None:
        super().__init__(info)
        self.source, self.srcs, self.rule = source, srcs, rule
        self._full: np.ndarray | None = None

    def apply(self, where: Block, block: np.ndarray, count: bool = True) -> np.ndarray:
        if self._full is None:
            arrays = [np.asarray(self.source.read(s)) for s in self.srcs]
            self._full = self.rule.to_keras(arrays).astype(block.dtype, copy=False)
        return self._full[where.index].reshape(block.shape)

    def figures(self) -> Figures:
        return CopyFigures(", ".join(s.name for s in self.srcs), self.rule.what)


@dataclass(frozen=True)
class _Pair:
    """What one TARGET tensor receives: SOURCE tensors, and the layout rule (None: the
    one tensor as it is)."""

    sources: list[TensorInfo]
    how: str
    rule: layouts.Rule | None = None


class _CopyStep(Step):
    command = "transplant"

    def __init__(self, pairs: dict[str, _Pair], source: Store, params: dict[str, Any]) -> None:
        super().__init__(Selection(floats_only=False, include_optimizer=True))
        self.pairs, self.source, self._params = pairs, source, params

    def selects(self, info: TensorInfo) -> bool:
        return info.path in self.pairs

    def op(self, info: TensorInfo) -> TensorOp | None:
        pair = self.pairs[info.path]
        if pair.rule is not None:
            return _LayoutOp(info, self.source, pair.sources, pair.rule)
        return _CopyOp(info, self.source, pair.sources[0], pair.how)

    def params(self) -> dict[str, Any]:
        return self._params


def _pairs(
    src: list[TensorInfo], tgt: list[TensorInfo], request: TransplantRequest
) -> tuple[list[tuple[TensorInfo, TensorInfo | None, str]], list[str]]:
    """(target, source or None, how) for every selected TARGET tensor; and warnings."""
    warnings: list[str] = []
    if request.match_by == "order":
        out = [(t, src[i] if i < len(src) else None, "order") for i, t in enumerate(tgt)]
        return out, warnings
    maps = [parse_map(m) for m in request.maps]
    for old, new in maps:
        if not any(rename(s.name, [(old, new)]) != s.name for s in src):
            warnings.append(f"map {old}={new} renames no source tensor")
    by_name: dict[str, tuple[TensorInfo, str]] = {}
    for s in src:
        renamed = rename(s.name, maps)
        by_name.setdefault(renamed, (s, "rename" if renamed != s.name else "name"))
    result: list[tuple[TensorInfo, TensorInfo | None, str]] = []
    for t in tgt:
        hit = by_name.get(t.name)
        result.append((t, hit[0], hit[1]) if hit else (t, None, ""))
    return result, warnings


def _row(t: TensorInfo, s: TensorInfo | None, how: str) -> tuple[TransplantRow, bool]:
    """The row of one pair, and whether it is copied."""
    if s is None:
        return TransplantRow(t.name, Received.KEPT, why="no source"), False
    if s.shape != t.shape:
        return TransplantRow(
            t.name,
            Received.SKIPPED,
            s.name,
            "shapes differ",
            why=f"shape {s.shape} vs {t.shape}",
        ), False
    detail = ""
    if s.dtype != t.dtype:
        lossy = (s.dtype, t.dtype) in LOSSY
        detail = f"cast {s.dtype} -> {t.dtype}" + (" (precision lost)" if lossy else "")
    return TransplantRow(t.name, Received.COPIED, s.name, detail, how=how), True


def run(request: TransplantRequest, path: str | Path) -> TransplantResult:
    """Copy the matched SOURCE tensors into a patched copy of TARGET (``path``)."""
    target_path = as_path(path)
    with open_store(request.source) as source, open_store(target_path) as target:
        pool = ema_weights(source) if request.from_ema else source.tensors()
        src = [
            s
            for s in pool
            if (request.include_optimizer or not s.optimizer)
            and s.dtype != "string"
            and (not request.source_select or any(match(s.name, g) for g in request.source_select))
        ]
        sel = replace(request.selection, include_optimizer=request.include_optimizer)
        tgt = [
            t
            for t in target.tensors()
            if t.dtype != "string" and (sel.include_optimizer or not t.optimizer) and sel.matches(t)
        ]
        if not tgt:
            raise UsageError("the selection matches no tensor of TARGET")
        if request.layout == "torch":
            return _finish(
                request, target_path, source, target, src, *_torch_rows(src, tgt, request)
            )
        paired, warnings = _pairs(src, tgt, request)
        refused = [
            f"{t.name} ({t.dtype}) from {s.name} ({s.dtype})"
            for t, s, _ in paired
            if s is not None and s.shape == t.shape and s.is_float and not t.is_float
        ]
        if refused:
            raise UsageError(
                f"a float cannot be written into an integer tensor: {', '.join(refused[:3])}"
            )
        rows: list[TransplantRow] = []
        pairs: dict[str, _Pair] = {}
        for t, s, how in paired:
            row, copied = _row(t, s, how)
            rows.append(row)
            if copied and s is not None:
                pairs[t.path] = _Pair([s], how)
        return _finish(request, target_path, source, target, src, tgt, rows, pairs, warnings)


def _finish(
    request: TransplantRequest,
    target_path: Path,
    source: Store,
    target: Store,
    src: list[TensorInfo],
    tgt: list[TensorInfo],
    rows: list[TransplantRow],
    pairs: dict[str, _Pair],
    warnings: list[str],
) -> TransplantResult:
    """Write the pairs into TARGET's copy (the one pipeline of every writer); the report."""
    used = {s.path for p in pairs.values() for s in p.sources}
    if not pairs and request.match_by == "order":
        raise UsageError(
            "no pair of SOURCE and TARGET weights in model order has matching shapes "
            f"({len(src)} source, {len(tgt)} target tensors)"
        )
    if not pairs:
        raise ParameterError(_nothing_matched(src, tgt, request.layout))
    unused = [s.name for s in src if s.path not in used]
    out = request.out.plan(target, target_path, other_inputs=(request.source,))
    params = {
        **({"from_ema": True} if request.from_ema else {}),
        "source": request.source.name,
        "source_digest": None
        if request.out.dry_run
        else digest(request.source, request.out.digest),
        "match_by": request.match_by,
        **({"layout": request.layout} if request.layout != "keras" else {}),
        **({"map": list(request.maps)} if request.maps else {}),
    }
    step = _CopyStep(pairs, source, params)
    transform = pipeline.run(
        target,
        [step],
        None if request.out.dry_run else out,
        ["transplant", str(request.source), str(target_path)],
        request.out,
    )
    changed = {c.info.name: c.max_change for c in transform.changes}
    for r in rows:
        if r.received == Received.COPIED:
            r.max_change = changed.get(r.target, 0.0)
    return TransplantResult(
        str(request.source), str(target_path), request.match_by, rows, unused, warnings,
        transform, request.strict,
    )  # fmt: skip


def _torch_rows(
    src: list[TensorInfo], tgt: list[TensorInfo], request: TransplantRequest
) -> tuple[list[TensorInfo], list[TransplantRow], dict[str, _Pair], list[str]]:
    """``--layout torch``: every TARGET tensor's rule (by its layer class) names the
    PyTorch tensors it is made of (``fc/kernel`` <- ``fc.weight``); SOURCE's names, after
    ``maps``, are matched to those (or, by order, SOURCE's tensors to the rules' roles
    in TARGET's model order), and the shapes checked through the rule."""
    rules = [(t, layouts.rule_for(t)) for t in tgt]
    warnings: list[str] = []
    found: dict[str, list[TensorInfo | None]] = {}
    how = request.match_by
    if request.match_by == "order":
        it = iter(src)
        for t, rule in rules:
            found[t.path] = [next(it, None) for _ in rule.roles]
    else:
        maps = [parse_map(m) for m in request.maps]
        for old, new in maps:
            if not any(rename(s.name, [(old, new)]) != s.name for s in src):
                warnings.append(f"map {old}={new} renames no source tensor")
        by_name: dict[str, TensorInfo] = {}
        for s in src:
            by_name.setdefault(rename(s.name, maps), s)
        for t, rule in rules:
            found[t.path] = [by_name.get(n) for n in rule.torch_names(t)]
        how = "rename" if maps else "name"
    rows: list[TransplantRow] = []
    pairs: dict[str, _Pair] = {}
    for t, rule in rules:
        got = found[t.path]
        names = rule.torch_names(t)
        if not all(got):
            missing = [n for n, g in zip(names, got, strict=True) if g is None]
            rows.append(TransplantRow(t.name, Received.KEPT, why=f"no {', '.join(missing)}"))
            continue
        srcs = [g for g in got if g is not None]
        shape = rule.keras_shape([s.shape for s in srcs])
        label = ", ".join(s.name for s in srcs)
        if shape != t.shape:
            shapes = ", ".join(str(s.shape) for s in srcs)
            rows.append(
                TransplantRow(
                    t.name,
                    Received.SKIPPED,
                    label,
                    "shapes differ",
                    why=f"{shapes} give {shape if shape else 'no'} shape, not {t.shape}",
                )  # fmt: skip
            )
            continue
        if any(s.is_float for s in srcs) and not t.is_float:
            raise UsageError(f"a float cannot be written into an integer tensor: {t.name}")
        rows.append(TransplantRow(t.name, Received.COPIED, label, rule.what, how=how))
        pairs[t.path] = _Pair(srcs, how, rule)
    return tgt, rows, pairs, warnings


# Kinds Keras keeps out of a model's trainable variables (and so out of the EMA).
NON_TRAINABLE_KINDS = frozenset({"moving_mean", "moving_variance"})


def ema_weights(store: Store) -> list[TensorInfo]:
    """The model's trainable weights as the optimizer's exponential moving averages hold
    them (Keras 3 ``use_ema=True``): named as the weights, read from the averages.

    Keras 3.15 stores an optimizer's variables as ``iteration``, ``learning_rate``, then
    (with ``use_ema``) one average per trainable variable in the model's order, then the
    optimizer's own slots: ``optimizer/2 ...`` are the averages. The model's trainable
    variables are its weights but BatchNormalization's moving statistics and the layers
    the config marks ``trainable: false``; shapes are checked pair by pair.
    """
    config = getattr(store, "model_config", None)
    compile_cfg = config.get("compile_config") if isinstance(config, dict) else None
    opt_cfg = ((compile_cfg or {}).get("optimizer") or {}).get("config") or {}
    if not opt_cfg.get("use_ema"):
        raise UsageError(
            f"{store.path}: its optimizer keeps no moving averages (no use_ema in its compile "
            "config; a .keras file saved with its optimizer is needed)"
        )
    frozen = {
        e["config"].get("name")
        for e in walk_config(config)
        if e["config"].get("trainable") is False and e is not config
    }
    weights = [
        t
        for t in store.tensors()
        if not t.optimizer and t.kind not in NON_TRAINABLE_KINDS and t.layer not in frozen
    ]
    slots = {t.name: t for t in store.tensors() if t.optimizer}
    out = []
    for i, w in enumerate(weights):
        avg = slots.get(f"optimizer/{i + 2}")
        if avg is None or avg.shape != w.shape or avg.dtype != w.dtype:
            raise UsageError(
                f"{store.path}: cannot locate the moving average of {w.name} among the "
                "optimizer's variables (the layout differs from Keras 3's)"
            )
        out.append(
            replace(
                avg,
                name=w.name,
                kind=w.kind,
                layer=w.layer,
                layer_class=w.layer_class,
                optimizer=False,
            )
        )
    return out


def _nothing_matched(src: list[TensorInfo], tgt: list[TensorInfo], layout: str = "keras") -> str:
    if layout == "torch":
        want = ", ".join(n for t in tgt[:2] for n in layouts.rule_for(t).torch_names(t))
        return (
            f"no tensor of SOURCE has the PyTorch names TARGET's layers expect (such as "
            f"{literal(want)}): rename SOURCE's with {{map}} OLD=NEW or {{map_file}}, or pair "
            "by position with {match_by} order; `weightcli export TARGET --to safetensors "
            "--layout torch` shows every name"
        )
    names = [s.name for s in src]
    shapes = {s.name: s.shape for s in src}
    near = []
    for t in tgt[:3]:
        close = difflib.get_close_matches(t.name, names, n=1, cutoff=0.3)
        if close:
            # With their shapes: a name that matches but a shape that does not says so.
            near.append(f"{t.name} {t.shape} ~ {close[0]} {shapes[close[0]]}")
    hint = f"; nearest: {', '.join(near)}" if near else ""
    return (
        f"no tensor of SOURCE matches one of TARGET{literal(hint)} (rename with {{map}} "
        "OLD=NEW, or pair by position with {match_by} order)"
    )
