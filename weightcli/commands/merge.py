"""``merge``: combine several checkpoints tensor by tensor, in one streaming pass, into a
surgery copy of the first input (or of ``base`` for the methods that have one).

Methods (arithmetic in float64, written in each tensor's own dtype):

- ``mean``: sum(w_i x_i) / sum(w_i); ``weights`` default to equal (they are normalised).
- ``ema``: e = x_1; e = decay * e + (1 - decay) * x_i for the next inputs, oldest first.
- ``task-arithmetic``: base + lambda * sum(x_i - base).
- ``ties`` (TIES-Merging, Yadav et al. 2023): per tensor, each task vector t_i = x_i - base
  keeps its ``density`` fraction of largest magnitudes (the rest set to 0); the sign of
  each element is elected by the total mass sum(t_i); the kept values that agree with it
  are averaged; merged = base + lambda * that average.

Only floating-point model weights are combined; integer tensors, counters and optimizer
state stay as the first input (or base) holds them, and the report says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weightcli import pipeline
from weightcli.compare import parse_map, rename
from weightcli.errors import ParameterError, UsageError, literal
from weightcli.figures import Figures, MergeFigures
from weightcli.params import OutputSpec
from weightcli.results import TransformResult
from weightcli.select import Selection
from weightcli.steps import Step, TensorOp
from weightcli.stores import open_store
from weightcli.stores.base import Block, Store
from weightcli.stores.remote import as_path
from weightcli.tensor import TensorInfo

__all__ = ["MergeRequest", "run"]

METHODS = ("mean", "ema", "task-arithmetic", "ties")
# TIES finds each task vector's magnitude threshold exactly, in memory, up to this size.
TIES_MAX_ELEMS = 1 << 22


@dataclass(frozen=True)
class MergeRequest:
    """The other inputs (the first is the ``run`` path), the method and its parameters."""

    others: tuple[Path, ...]
    method: str = "mean"
    weights: tuple[float, ...] = ()
    decay: float | None = None
    base: Path | None = None
    lam: float | None = None  # task-arithmetic, ties: 1.0 when not given
    density: float | None = None
    selection: Selection = field(default_factory=Selection)
    maps: tuple[str, ...] = ()
    out: OutputSpec = field(default_factory=OutputSpec)

    def __post_init__(self) -> None:
        self.out.refuse("in_place", command="merge")
        n = len(self.others) + 1
        if self.method not in METHODS:
            raise ParameterError(f"{{method}} must be one of {', '.join(METHODS)}")
        if n < 2:
            raise ParameterError("merge needs at least two inputs")
        if self.weights:
            if self.method != "mean":
                raise ParameterError("{weights} go with {method} mean")
            if len(self.weights) != n:
                raise ParameterError(
                    f"{{weights}} gives {len(self.weights)} weights for {n} inputs"
                )
            if not all(math.isfinite(w) for w in self.weights) or sum(self.weights) == 0:
                raise ParameterError("{weights} must be finite numbers whose sum is not 0")
        needs_base = self.method in ("task-arithmetic", "ties")
        if needs_base and self.base is None:
            raise ParameterError(f"{{method}} {self.method} needs {{base}} BASE")
        if not needs_base and self.base is not None:
            raise ParameterError(f"{{base}} goes with task-arithmetic or ties, not {self.method}")
        if self.method == "ema":
            if self.decay is None:
                raise ParameterError("{method} ema needs {decay} (between 0 and 1, e.g. 0.9)")
            if not 0 < self.decay < 1:
                raise ParameterError(f"{{decay}} must be in (0, 1), got {self.decay}")
        elif self.decay is not None:
            raise ParameterError("{decay} goes with {method} ema")
        if self.method == "ties":
            if self.density is None or not 0 < self.density <= 1:
                raise ParameterError(f"{{density}} must be in (0, 1], got {self.density}")
        elif self.density is not None:
            raise ParameterError("{density} goes with {method} ties")
        if self.lam is not None:
            if not needs_base:
                raise ParameterError(
                    f"{{lam}} goes with task-arithmetic or ties, not {self.method}"
                )
            if not math.isfinite(self.lam):
                raise ParameterError("{lam} must be a finite number")
        for m in self.maps:
            parse_map(m)

    def input_weights(self) -> list[float]:
        """Each input's weight in the result, as the report shows it (mean and ema)."""
        n = len(self.others) + 1
        if self.method == "mean":
            w = list(self.weights) if self.weights else [1.0] * n
            total = sum(w)
            return [x / total for x in w]
        if self.method == "ema":
            d = self.decay or 0.0
            out = [d ** (n - 1)] + [(1 - d) * d ** (n - 1 - i) for i in range(1, n)]
            return out
        return [self.scale] * n

    @property
    def scale(self) -> float:
        """lambda of task-arithmetic and ties (1.0 by default)."""
        return 1.0 if self.lam is None else float(self.lam)


class _MergeOp(TensorOp):
    def __init__(
        self, info: TensorInfo, step: _MergeStep, parts: list[tuple[Store, TensorInfo]]
    ) -> None:
        super().__init__(info)
        self.step, self.parts = step, parts
        self.kept = 0
        self.agree = 0
        self.seen = 0
        self.thresholds: list[float] = []
        if step.request.method == "ties":
            if info.size > TIES_MAX_ELEMS:
                raise UsageError(
                    f"{literal(info.name)}: ties on tensors over {TIES_MAX_ELEMS} elements is not supported"
                )
            self.passes = 1
            self._tau: list[list[np.ndarray]] = [[] for _ in parts]

    def _inputs(self, where: Block, block: np.ndarray) -> list[np.ndarray]:
        """The same block of every other input, in their stored dtype (ufuncs below widen
        them to float64 as they go: no float64 copies)."""
        return [np.asarray(s.read(t, where)).reshape(block.shape) for s, t in self.parts]

    def observe(self, pass_no: int, where: Block, block: np.ndarray) -> None:
        base = block.astype(np.float64)
        for i, x in enumerate(self._inputs(where, block)):
            self._tau[i].append(np.abs(x - base).ravel())

    def end_pass(self, pass_no: int) -> bool:
        p = self.step.request.density or 1.0
        for taus in self._tau:
            mags = np.concatenate(taus) if taus else np.zeros(0)
            k = int(math.ceil(p * mags.size))
            self.thresholds.append(
                float(np.partition(mags, mags.size - k)[mags.size - k])
                if 0 < k <= mags.size
                else math.inf
            )
        self._tau = []
        return False

    def apply(self, where: Block, block: np.ndarray, count: bool = True) -> np.ndarray:
        r = self.step.request
        xs = self._inputs(where, block)
        if r.method != "ties":
            return self._linear(block, xs)
        carrier = block.astype(np.float64)
        taus = []
        for x, thr in zip(xs, self.thresholds, strict=True):
            t = x - carrier
            taus.append(np.where(np.abs(t) >= thr, t, 0.0))
        stack = np.stack(taus)
        sign = np.sign(stack.sum(axis=0))
        agree = (np.sign(stack) == sign) & (stack != 0)
        n_agree = agree.sum(axis=0)
        merged = np.where(n_agree > 0, (stack * agree).sum(axis=0) / np.maximum(n_agree, 1), 0.0)
        out = carrier + r.scale * merged
        if count:
            self.kept += int(np.count_nonzero(stack))
            nonzero = stack != 0
            self.agree += int(np.count_nonzero(agree.sum(axis=0) == nonzero.sum(axis=0)))
            self.seen += block.size
        return np.asarray(out).astype(block.dtype)

    def _buffers(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[np.ndarray, ...]:
        """Float64 work buffers and the output buffer, reused from block to block: fresh
        megabytes for every block cost page faults (they took most of the time)."""
        n = int(np.prod(shape))
        bufs = self.step.buffers  # one set for the step: tensors are merged one at a time
        if bufs is None or bufs[0].size < n or bufs[3].dtype != dtype:
            bufs = self.step.buffers = (np.empty(n), np.empty(n), np.empty(n), np.empty(n, dtype))
        return tuple(b[:n].reshape(shape) for b in bufs)

    def _linear(self, block: np.ndarray, xs: list[np.ndarray]) -> np.ndarray:
        """mean, ema, task-arithmetic: float64 arithmetic in reused buffers."""
        r = self.step.request
        out, tmp, carrier, result = self._buffers(block.shape, block.dtype)
        np.copyto(out, block)
        if r.method == "mean":
            w = r.input_weights()  # the carrier (the first input) is part of the mean
            out *= w[0]
            for wi, x in zip(w[1:], xs, strict=True):
                np.copyto(tmp, x)
                tmp *= wi
                out += tmp
        elif r.method == "ema":
            d = r.decay or 0.0
            for x in xs:
                out *= d
                np.copyto(tmp, x)
                tmp *= 1 - d
                out += tmp
        else:  # task arithmetic: base + lambda * sum(x_i - base)
            np.copyto(carrier, block)
            out.fill(0.0)
            for x in xs:
                np.copyto(tmp, x)
                tmp -= carrier
                out += tmp
            out *= r.scale
            out += carrier
        np.copyto(result, out, casting="unsafe")
        return result

    def figures(self) -> Figures:
        r = self.step.request
        if r.method == "ties" and self.seen:
            return MergeFigures(
                r.method,
                list(r.input_weights()),
                self.kept / (self.seen * len(self.parts)),
                self.agree / self.seen,
            )
        return MergeFigures(r.method, list(r.input_weights()))


class _MergeStep(Step):
    command = "merge"

    def __init__(
        self,
        request: MergeRequest,
        selection: Selection,
        matched: dict[str, list[tuple[Store, TensorInfo]]],
        params: dict[str, Any],
    ) -> None:
        super().__init__(selection)
        self.request, self.matched, self._params = request, matched, params
        self.buffers: tuple[np.ndarray, ...] | None = None

    def selects(self, info: TensorInfo) -> bool:
        return info.path in self.matched

    def op(self, info: TensorInfo) -> TensorOp | None:
        return _MergeOp(info, self, self.matched[info.path])

    def params(self) -> dict[str, Any]:
        # Asked for when the history is written: the inputs' hashes were computed on the
        # other core meanwhile (the carrier's by the pipeline itself).
        resolved: dict[str, Any] = _resolve(self._params)
        return resolved


def _resolve(value: Any) -> Any:
    if isinstance(value, pipeline.DigestOf):
        return value.result()
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v) for v in value]
    return value


def run(request: MergeRequest, path: str | Path) -> TransformResult:
    """Merge ``path`` (the first input) with ``request.others`` into OUT."""
    first = as_path(path)
    inputs = [first, *request.others]
    carrier_path = request.base if request.base is not None else first
    combined = inputs if request.base is not None else request.others
    stores: list[Store] = []
    try:
        carrier = open_store(carrier_path)
        stores.append(carrier)
        others = []
        for p in combined:
            s = open_store(p)
            stores.append(s)
            others.append(s)
        maps = [parse_map(m) for m in request.maps]
        sel = request.selection
        chosen = [t for t in carrier.tensors() if sel.matches(t) and t.is_float and not t.optimizer]
        if not chosen:
            raise UsageError(f"{carrier_path}: the selection matches no floating-point weight")
        matched: dict[str, list[tuple[Store, TensorInfo]]] = {}
        problems: list[str] = []
        for s in others:
            names = {rename(t.name, maps): t for t in s.tensors() if not t.optimizer}
            for t in chosen:
                o = names.get(t.name)
                if o is None:
                    problems.append(f"{t.name}: in {carrier_path.name}, not in {s.path.name}")
                elif o.shape != t.shape or o.dtype != t.dtype:
                    problems.append(
                        f"{t.name}: {o.shape} {o.dtype} in {s.path.name}, {t.shape} {t.dtype} "
                        f"in {carrier_path.name}"
                    )
                else:
                    matched.setdefault(t.path, []).append((s, o))
        if problems:
            more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise ParameterError(
                f"the inputs do not agree: {literal('; '.join(problems[:5]))}{more} "
                "(rename with {map} OLD=NEW, or leave tensors out with {exclude})"
            )
        out = request.out.plan(
            carrier, carrier_path, other_inputs=(*inputs, *([request.base] if request.base else []))
        )
        # Every input hashed once, by one process beside the merge (one interpreter,
        # a thread per input in it), while the merge runs.
        unique = list(dict.fromkeys([*inputs, *([request.base] if request.base else [])]))
        group = None if request.out.dry_run else pipeline.Digest(unique, request.out.digest)
        hashes = {p: group.of(p) for p in unique} if group is not None else {}

        def sha(p: Path) -> pipeline.DigestOf | None:
            return hashes.get(p)

        params: dict[str, Any] = {
            "method": request.method,
            "inputs": [{"file": p.name, "digest": sha(p)} for p in inputs],
            "weights": request.input_weights(),
        }
        if request.base is not None:
            params["base"] = {"file": request.base.name, "digest": sha(request.base)}
        for key in ("decay", "density"):
            if getattr(request, key) is not None:
                params[key] = getattr(request, key)
        if request.method in ("task-arithmetic", "ties"):
            params["lambda"] = request.scale
        step = _MergeStep(request, Selection(floats_only=True), matched, params)
        try:
            result = pipeline.run(
                carrier,
                [step],
                None if request.out.dry_run else out,
                ["merge", *map(str, inputs)],
                request.out,
                source_digest=hashes.get(carrier_path),  # hashed once, not twice
            )
        except BaseException:
            if group is not None:
                group.cancel()
            raise
        return result
    finally:
        for s in stores:
            s.close()
