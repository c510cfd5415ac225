"""``merge``: combine several checkpoints tensor by tensor, streaming, into a surgery
copy of the first input (or of the base, for the methods that have one).

The methods and their definitions are in ``weightcli.transforms.merge`` (mean, ema, the
task arithmetic family of mergekit: task-arithmetic, ties, dare-linear, dare-ties,
breadcrumbs, breadcrumbs-ties, della, della-linear; slerp; model-stock); what a merge
asks for, from flags or a merge file, is a ``mergefile.MergeSpec``, every parameter of
which is evaluated at every merged tensor and checked before a tensor is read.

Streaming: every method works block by block. The ones that need a whole tensor's
figure read it in passes first: magnitude selections (ties, breadcrumbs) the exact
ranks by a radix select (``Window``: four passes of a float64 task vector, and a census
of ties when there are any), slerp the dot product and norms, model-stock the Gram
matrix of the task vectors; DELLA ranks within rows, so its blocks hold whole rows.
Random draws (DARE, DELLA) are counter-based: the same whatever the split.

Only floating-point model weights are combined; integer tensors, counters and optimizer
state stay as the first input (or base) holds them, and the report says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from weightcli import mergefile, native, pipeline
from weightcli.compare import parse_map, rename
from weightcli.errors import ParameterError, UnsupportedError, UsageError, literal
from weightcli.figures import Figures, MergeFigures
from weightcli.mergefile import MergeSpec, Setting
from weightcli.params import OutputSpec
from weightcli.prefetch import Speculative
from weightcli.results import TransformResult
from weightcli.select import Selection
from weightcli.steps import Step, TensorOp
from weightcli.stores import open_store
from weightcli.stores.base import BLOCK_ELEMS, Block, Store
from weightcli.stores.remote import as_path
from weightcli.tensor import TensorInfo
from weightcli.transforms import merge as methods

__all__ = ["METHOD_FIELDS", "MergeRequest", "MethodParams", "run"]

METHODS = tuple(methods.METHODS)


@dataclass(frozen=True)
class MethodParams:
    """A method's parameters as flags give them (None: the method's default; which
    method takes which: ``transforms.merge.METHODS``). ``lam`` is ``lambda``."""

    weights: tuple[float, ...] = ()
    decay: float | None = None
    lam: float | None = None
    density: float | None = None
    gamma: float | None = None
    epsilon: float | None = None
    t: float | None = None
    seed: int | None = None
    normalize: bool | None = None
    rescale: bool | None = None

    def given(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) not in (None, ())]

    def general(self) -> list[tuple[str, float | int | bool | None]]:
        """(merge-file name, value) of every parameter but the weights."""
        return [
            ("lambda" if f.name == "lam" else f.name, getattr(self, f.name))
            for f in fields(self)
            if f.name != "weights"
        ]


METHOD_FIELDS = tuple(f.name for f in fields(MethodParams))


@dataclass(frozen=True)
class MergeRequest:
    """The other inputs (the first is the ``run`` path), the method and its parameters;
    or ``config``: the ``run`` path is a merge file that says all of it."""

    others: tuple[Path, ...] = ()
    method: str = "mean"
    base: Path | None = None
    params: MethodParams = field(default_factory=MethodParams)
    config: bool = False
    selection: Selection = field(default_factory=Selection)
    maps: tuple[str, ...] = ()
    out: OutputSpec = field(default_factory=OutputSpec)
    block_elems: int = BLOCK_ELEMS  # the most elements read at once (tests: small)

    def __post_init__(self) -> None:
        self.out.refuse("in_place", "requantize", command="merge")
        for m in self.maps:
            parse_map(m)
        if self.config:
            if self.params.given() or self.others or self.base is not None or self.method != "mean":
                raise ParameterError(
                    "a merge file says the models, the method and its parameters: give "
                    "no other inputs, {method}, {base} or method parameters with it"
                )
            return
        if methods.method_named(self.method) is None:
            raise ParameterError(f"{{method}} must be one of {', '.join(METHODS)}")
        self.spec(Path("first"))  # every flag checked now

    def spec(self, first: Path) -> MergeSpec:
        """The merge these flags ask for (``first``: the first input)."""
        method = methods.method_named(self.method)
        assert method is not None
        inputs = (first, *self.others)
        general: dict[str, Setting] = {}
        for key, value in self.params.general():
            if value is not None:
                mergefile.check(key, value, None, method)
                general[key] = Setting.of(value)
        per_input: tuple[dict[str, Setting], ...] = tuple({} for _ in inputs)
        weights = self.params.weights
        if weights:
            if "weight" not in method.per_input:
                raise ParameterError(f"{{weights}} do not go with {{method}} {method.name}")
            if len(weights) != len(inputs):
                raise ParameterError(
                    f"{{weights}} gives {len(weights)} weights for {len(inputs)} inputs"
                )
            if not all(math.isfinite(w) for w in weights) or (
                method.name == "mean" and sum(weights) == 0
            ):
                raise ParameterError("{weights} must be finite numbers whose sum is not 0")
            per_input = tuple({"weight": Setting.of(w)} for w in weights)
        return MergeSpec(method, inputs, self.base, per_input, general)


class _MergeOp(TensorOp):
    """One tensor: the carrier's block (the base, or the first input) and the same block
    of every other input, combined by the spec's method with the parameters evaluated at
    this tensor."""

    def __init__(
        self, info: TensorInfo, step: _MergeStep, parts: list[tuple[Store, TensorInfo]]
    ) -> None:
        super().__init__(info)
        self.step, self.parts = step, parts
        spec = step.spec
        m = self.method = spec.method
        depth = step.depths[info.path]
        n = len(spec.inputs)
        self.values = [{k: spec.value(k, i, info, depth) for k in m.per_input} for i in range(n)]
        self.general = {
            k: spec.value(k, None, info, depth)
            for k in ("lambda", "normalize", "rescale", "seed", "decay", "t")
            if k in m.general or k in spec.general or k == "lambda"
        }
        self.kept = self.agree = self.seen = 0
        # DARE's masks of the next block drawn on a helper thread meanwhile (numpy's Philox
        # releases the GIL): drawing them took a third of a dare-ties run
        self.draws: Speculative[tuple[int, tuple[int, ...]], list[np.ndarray | None]] = Speculative(
            self._draw
        )
        self.windows: list[methods.Window] = []
        if m.sparsify in ("magnitude", "outliers"):
            for v in self.values:
                dens = float(v.get("density", 1.0))
                if m.sparsify == "magnitude":
                    lo, hi = info.size - methods.keep_count(info.size, dens), info.size
                else:
                    lo, hi = methods.outlier_window(info.size, dens, float(v["gamma"]))
                self.windows.append(methods.Window(info.size, lo, hi))
            if not all(w.done for w in self.windows):
                self.passes = 1
        if m.random:
            seed = int(self.general.get("seed", 0))
            self.keys = [methods.stream_key(seed, info.name, i) for i in range(n)]
        if m.sparsify == "della":
            last = info.shape[-1] if info.shape else 1
            self.align = (max(0, info.ndim - 1), last) if info.ndim else None
        if m.kind in ("slerp", "stock"):
            self.passes = 1
            k = len(parts) if m.kind == "stock" else 2
            self.gram = np.zeros((k, k))
        self.coefficients: tuple[float, float] = (1.0, 0.0)

    def _inputs(self, where: Block, block: np.ndarray) -> list[np.ndarray]:
        """The same block of every other input, in their stored dtype."""
        return [np.asarray(s.read(t, where)).reshape(block.shape) for s, t in self.parts]

    def observe(self, pass_no: int, where: Block, block: np.ndarray) -> None:
        base = block.astype(np.float64)
        xs = self._inputs(where, block)
        if self.method.kind == "slerp":
            v = [base.ravel(), xs[0].astype(np.float64).ravel()]
        elif self.method.kind == "stock":
            v = [(x - base).ravel() for x in xs]
        else:
            for w, x in zip(self.windows, xs, strict=True):
                if not w.done:
                    w.observe(where.first, x - base)
            return
        for i in range(len(v)):
            for j in range(i, len(v)):
                self.gram[i, j] += float(np.dot(v[i], v[j]))
                self.gram[j, i] = self.gram[i, j]

    def end_pass(self, pass_no: int) -> bool:
        kind = self.method.kind
        if kind == "slerp":
            g = self.gram
            t = float(self.general["t"])
            self.coefficients = methods.slerp_coefficients(
                t, g[0, 1], math.sqrt(g[0, 0]), math.sqrt(g[1, 1])
            )
            return False
        if kind == "stock":
            ratio = methods.stock_ratio(self.gram)
            if not math.isfinite(ratio):
                raise UsageError(
                    f"{literal(self.info.name)}: model-stock's ratio is not finite (the task "
                    "vectors' mean cosine is -1/(N-1)): leave the tensor out with {exclude}"
                )
            self.coefficients = (ratio, 1.0 - ratio)
            return False
        more = [w.end_pass() for w in self.windows if not w.done]
        if any(more):
            self.passes += 1
            return True
        return False

    def apply(self, where: Block, block: np.ndarray, count: bool = True) -> np.ndarray:
        m = self.method
        xs = self._inputs(where, block)
        if m.kind == "linear":
            return self._linear(block, xs)
        if m.kind not in ("slerp", "stock"):
            fused = self._fused(where, block, xs, count)
            if fused is not None:
                return fused
        carrier = block.astype(np.float64)
        if m.kind == "slerp":
            s0, s1 = self.coefficients
            out = s0 * carrier + s1 * xs[0].astype(np.float64)
        elif m.kind == "stock":
            ratio, rest = self.coefficients
            mean = np.mean([x.astype(np.float64) for x in xs], axis=0)
            out = ratio * mean + rest * carrier
        else:
            out = carrier + float(self.general["lambda"]) * self._mixed(where, carrier, xs, count)
        return np.asarray(out).astype(block.dtype)

    def _fused(
        self, where: Block, block: np.ndarray, xs: list[np.ndarray], count: bool
    ) -> np.ndarray | None:
        """``apply`` of a task-arithmetic method by the native kernel (native.py): the
        same masks as ``_mixed`` draws, the same float64 steps, the same bytes. None where
        it does not apply (DELLA's per-element rescale, other dtypes)."""
        m = self.method
        if m.sparsify == "della" or not native.fused(block.dtype, *(x.dtype for x in xs)):
            return None
        rescale = bool(self.general.get("rescale", m.rescale))
        keeps: list[np.ndarray | None] = []
        rescales = [1.0] * len(xs)
        if m.sparsify == "random":
            keeps = self.draws.take((where.first, block.shape))
            following = where.first + block.size
            if following < self.info.size:  # most blocks have the shape of the one before
                self.draws.start((following, block.shape))
            else:  # the tensor's last block: its helper thread is done
                self.draws.close()
            for i, keep in enumerate(keeps):
                if keep is not None and rescale:
                    rescales[i] = 1.0 / float(self.values[i]["density"])
        for i, x in enumerate(xs):
            if m.sparsify in ("magnitude", "outliers"):
                keep = self.windows[i].keep(where.first, np.subtract(x, block, dtype=np.float64))
                keeps.append(np.ascontiguousarray(keep))
            elif m.sparsify != "random":
                keeps.append(None)
        weights = [float(v.get("weight", 1.0)) for v in self.values]
        got = native.task_combine_f32(
            block,
            xs,
            keeps,
            [w * r for w, r in zip(weights, rescales, strict=True)],  # as combine folds them
            weights,
            m.consensus,
            bool(self.general.get("normalize", m.normalize)),
            float(self.general["lambda"]),
        )
        if got is None:
            return None
        out, agreeing = got
        if count and m.sparsify is not None:
            self.kept += sum(
                int(np.count_nonzero(k)) if k is not None else block.size for k in keeps
            )
            self.seen += block.size
            self.agree += agreeing
        return out

    def _draw(self, at: tuple[int, tuple[int, ...]]) -> list[np.ndarray | None]:
        """DARE's keep masks of every input for the block of ``shape`` from ``first``
        (None for an input kept whole)."""
        first, shape = at
        out: list[np.ndarray | None] = []
        for i in range(len(self.values)):
            p = float(self.values[i]["density"])
            out.append(
                methods.random_keep(self.keys[i], first, np.empty(shape, np.uint8), p)
                if p < 1
                else None
            )
        return out

    def _mixed(
        self, where: Block, carrier: np.ndarray, xs: list[np.ndarray], count: bool
    ) -> np.ndarray:
        m = self.method
        rescale = bool(self.general.get("rescale", m.rescale))
        deltas = []
        rescales = [1.0] * len(xs)
        for i, x in enumerate(xs):
            d = np.subtract(x, carrier)  # float64: the carrier is
            v = self.values[i]
            keep: np.ndarray | None = None
            if m.sparsify in ("magnitude", "outliers"):
                keep = self.windows[i].keep(where.first, d)
                d *= keep
            elif m.sparsify == "random":
                p = float(v["density"])
                if p < 1:
                    keep = methods.random_keep(self.keys[i], where.first, d, p)
                    d *= keep
                    rescales[i] = 1.0 / p if rescale else 1.0  # applied with the weight
            elif m.sparsify == "della":
                p_el = methods.della_probs(d, float(v["density"]), float(v["epsilon"]))
                keep = methods.random_keep(self.keys[i], where.first, d, p_el)
                d *= keep
                if rescale:
                    d /= p_el
            if count and m.sparsify is not None:
                self.kept += int(np.count_nonzero(keep)) if keep is not None else d.size
            deltas.append(d)
        weights = [float(v.get("weight", 1.0)) for v in self.values]
        mixed, agreeing = methods.combine(
            deltas,
            weights,
            m.consensus,
            bool(self.general.get("normalize", m.normalize)),
            rescales,
        )
        if count and m.sparsify is not None:
            self.seen += carrier.size
            self.agree += agreeing
        return mixed

    def _buffers(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[np.ndarray, ...]:
        """Float64 work buffers and the output buffer, reused from block to block: fresh
        megabytes for every block cost page faults (they took most of the time)."""
        n = int(np.prod(shape))
        bufs = self.step.buffers  # one set for the step: tensors are merged one at a time
        if bufs is None or bufs[0].size < n or bufs[2].dtype != dtype:
            bufs = self.step.buffers = (np.empty(n), np.empty(n), np.empty(n, dtype))
        return tuple(b[:n].reshape(shape) for b in bufs)

    def _linear(self, block: np.ndarray, xs: list[np.ndarray]) -> np.ndarray:
        """mean, ema: float64 arithmetic in reused buffers."""
        out, tmp, result = self._buffers(block.shape, block.dtype)
        if self.method.name == "mean":
            w = [float(v["weight"]) for v in self.values]
            total = sum(w)
            w = [x / total for x in w]  # the carrier (the first input) is part of the mean
            a, c = w, [1.0] * len(w)
        else:
            d = float(self.general["decay"])
            a, c = [1.0] + [1 - d] * len(xs), [1.0] + [d] * len(xs)
        # The same float64 steps as below, in one pass (native.py): the same bytes.
        if native.lincomb_f32(result, [block, *xs], a, c) is not None:
            return result
        np.copyto(out, block)
        if self.method.name == "mean":
            out *= w[0]
            for wi, x in zip(w[1:], xs, strict=True):
                np.copyto(tmp, x)
                tmp *= wi
                out += tmp
        else:
            for x in xs:
                out *= d
                np.copyto(tmp, x)
                tmp *= 1 - d
                out += tmp
        np.copyto(result, out, casting="unsafe")
        return result

    def figures(self) -> Figures:
        m = self.method
        weights = self.step.shown_weights
        if m.sparsify is not None and self.seen:
            return MergeFigures(
                m.name,
                weights,
                self.kept / (self.seen * len(self.values)),
                self.agree / self.seen if m.consensus else None,
            )
        if m.kind in ("slerp", "stock"):
            return MergeFigures(m.name, weights, coefficients=list(self.coefficients))
        return MergeFigures(m.name, weights)


class _MergeStep(Step):
    command = "merge"

    def __init__(
        self,
        spec: MergeSpec,
        matched: dict[str, list[tuple[Store, TensorInfo]]],
        depths: dict[str, float],
        params: dict[str, Any],
        shown_weights: list[float],
    ) -> None:
        super().__init__(Selection(floats_only=True))
        self.spec, self.matched, self.depths, self._params = spec, matched, depths, params
        self.shown_weights = shown_weights
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


def _shown_weights(spec: MergeSpec) -> list[float]:
    """Each input's weight as the report shows it (constant settings only)."""
    m = spec.method
    n = len(spec.inputs)

    def const(i: int | None, key: str) -> float:
        settings = spec.per_input[i] if i is not None and spec.per_input else {}
        s = settings.get(key) or spec.general.get(key)
        if s is None:
            return float(methods.DEFAULTS.get(key, 1.0))
        v = s.rules[0][1]
        return float(v if not isinstance(v, tuple) else v[0])

    if m.name == "mean":
        w = [const(i, "weight") for i in range(n)]
        return [x / sum(w) for x in w]
    if m.name == "ema":
        d = const(None, "decay")
        return [d ** (n - 1)] + [(1 - d) * d ** (n - 1 - i) for i in range(1, n)]
    if "weight" in m.per_input:
        return [const(i, "weight") for i in range(n)]
    return []


def _same_codes(carrier: Store, others: list[Store], maps: list[tuple[str, str]]) -> None:
    """A natively quantized layer is merged through its float scale only: its integer
    codes are the carrier's. That is right only when every input holds the same codes
    (fine-tunes of one quantized model's scales); else refused, before anything is read
    further, rather than pairing one model's codes with a merged scale."""
    codes = [t for t in carrier.tensors() if t.quantized and not t.is_float and not t.optimizer]
    for s in others:
        names = {rename(t.name, maps): t for t in s.tensors() if not t.optimizer}
        for t in codes:
            o = names.get(t.name)
            same = (
                o is not None
                and o.shape == t.shape
                and o.dtype == t.dtype
                and all(
                    np.array_equal(a, b)
                    for (_, a), (_, b) in zip(carrier.blocks(t), s.blocks(o), strict=True)
                )
            )
            if not same:
                raise UnsupportedError(
                    f"{literal(t.name)} is stored quantized and its codes differ between "
                    f"{literal(carrier.path.name)} and {literal(s.path.name)}: merge the float "
                    "models, then quantize the result"
                )


def run(request: MergeRequest, path: str | Path) -> TransformResult:
    """Merge ``path`` (the first input; with ``request.config``, the merge file) with the
    other inputs into OUT."""
    given = as_path(path)
    spec = mergefile.load(given) if request.config else request.spec(given)
    inputs = list(spec.inputs)
    carrier_path = spec.base if spec.base is not None else inputs[0]
    combined = inputs if spec.base is not None else inputs[1:]
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
        _same_codes(carrier, others, maps)
        depths = mergefile.depths(chosen)
        spec.check_values(chosen, depths)  # every parameter at every tensor, before reading
        if spec.method.name == "mean":
            for t in chosen:
                if (
                    sum(
                        float(spec.value("weight", i, t, depths[t.path]))
                        for i in range(len(inputs))
                    )
                    == 0
                ):
                    raise ParameterError(f"{literal(t.name)}: the weights of the mean sum to 0")
        every = [*inputs, *([spec.base] if spec.base else [])]
        out = request.out.plan(carrier, carrier_path, other_inputs=tuple(every))
        # Every input hashed once, by one process beside the merge (one interpreter,
        # a thread per input in it), while the merge runs.
        unique = list(dict.fromkeys(every))
        group = None if request.out.dry_run else pipeline.Digest(unique, request.out.digest)
        hashes = {p: group.of(p) for p in unique} if group is not None else {}

        def sha(p: Path) -> pipeline.DigestOf | None:
            return hashes.get(p)

        shown = _shown_weights(spec)
        params: dict[str, Any] = {
            "method": spec.method.name,
            "inputs": [{"file": p.name, "digest": sha(p)} for p in inputs],
        }
        if shown:
            params["weights"] = shown
        if spec.base is not None:
            params["base"] = {"file": spec.base.name, "digest": sha(spec.base)}
        if spec.document is not None:
            params["merge_file"] = {
                "file": given.name,
                "digest": sha_file(given),
                "content": spec.document,
            }
        else:
            for key, setting in spec.general.items():
                params[key] = setting.rules[0][1]
            if "lambda" not in spec.general and spec.method.kind == "gta":
                params["lambda"] = 1.0
        step = _MergeStep(spec, matched, depths, params, shown)
        command = ["merge", *(["--config", str(given)] if request.config else map(str, inputs))]
        try:
            result = pipeline.run(
                carrier,
                [step],
                None if request.out.dry_run else out,
                command,
                request.out,
                block_elems=request.block_elems,
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


def sha_file(path: Path) -> str:
    """The merge file's own sha256 (a small file, read whole)."""
    import hashlib

    from weightcli.stores import capped

    return (
        "sha256:"
        + hashlib.sha256(
            capped.read_bytes(path, mergefile.MERGE_FILE_BYTES, "merge file")
        ).hexdigest()
    )
