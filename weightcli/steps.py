"""Steps: a transform bound to its selection and parameters, planned per tensor.

A step makes one ``TensorOp`` per tensor it touches. An op may need passes over
the tensor before it can transform it (per-tensor percentiles, sigma bounds,
per-channel quantization ranges): ``passes`` says how many, ``observe`` sees each
block of each pass, and ``apply`` transforms one block. The pipeline streams the
blocks; ops never read files (a step that needs every tensor first reads them through
the store in ``prepare``: ``prune --scope global``).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from weightcli import native
from weightcli.dtypes import to_numpy
from weightcli.errors import ParameterError, UnsupportedError, UsageError, literal
from weightcli.figures import (
    CastFigures,
    ClipFigures,
    ClusterFigures,
    Figures,
    NoFigures,
    PruneFigures,
    QuantizeFigures,
    ScaleFigures,
)
from weightcli.select import Selection
from weightcli.stats import RunningStats
from weightcli.stores.base import BLOCK_ELEMS, Block, Store
from weightcli.tensor import TensorInfo
from weightcli.transforms import clip as clipmod
from weightcli.transforms import cluster as clustermod
from weightcli.transforms import prune as prunemod
from weightcli.transforms import quantize as qmod
from weightcli.transforms import scale as scalemod


class TensorOp:
    """One step applied to one tensor."""

    passes = 0
    # (axis, m): blocks never cut a run of m indices of axis (N:M sparsity's groups).
    align: tuple[int, int] | None = None

    def __init__(self, info: TensorInfo) -> None:
        self.info = info

    @property
    def out_dtype(self) -> str:
        return self.info.dtype

    def observe(self, pass_no: int, where: Block, block: np.ndarray) -> None:  # noqa: B027
        """See one block during statistics pass ``pass_no``."""

    def end_pass(self, pass_no: int) -> bool:
        """Close a statistics pass; False when no further pass is needed."""
        return pass_no + 1 < self.passes

    def apply(self, where: Block, block: np.ndarray, count: bool = True) -> np.ndarray:
        """Transform one block; ``count`` is False on statistics passes (no figures recorded)."""
        raise NotImplementedError

    def apply_summarized(self, where: Block, block: np.ndarray) -> tuple[np.ndarray, Any] | None:
        """``apply(where, block)`` and ``native.pair_f32``'s summary of the change, in one
        pass; None where no fused kernel applies (then ``apply`` runs, and the summary
        after it)."""
        return None

    def figures(self) -> Figures:
        return NoFigures()


class Step:
    """A transform with its own selection."""

    command = "step"

    def __init__(self, selection: Selection) -> None:
        self.selection = selection

    def selects(self, info: TensorInfo) -> bool:
        return self.selection.matches(info)

    def op(self, info: TensorInfo) -> TensorOp | None:
        raise NotImplementedError

    def leaves_out(self, info: TensorInfo) -> bool:
        """True when the selection matches ``info`` but the step leaves it alone by default."""
        return False

    def why_nothing(self, tensors: list[TensorInfo]) -> str | None:
        """Why the selection matches tensors but the step changes none (a message
        template naming parameters), or None: said only when it is the reason."""
        return None

    def check(self, tensors: list[TensorInfo]) -> None:  # noqa: B027 - optional hook
        """Refuse parameters that cannot apply to this file (before anything is read)."""

    def prepare(  # noqa: B027 - optional hook
        self, store: Store, chosen: list[TensorInfo], block_elems: int = BLOCK_ELEMS
    ) -> None:
        """Read what the step needs across tensors before any is changed, in blocks of at
        most ``block_elems`` (``prune --scope global``: one threshold over every tensor
        it prunes)."""

    def params(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"command": self.command, **self.params(), **selection_params(self.selection)}


def selection_params(sel: Selection) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("select", "exclude", "layer_types", "kinds"):
        value = getattr(sel, key)
        if value:
            out[key] = list(value)
    if sel.include_optimizer:
        out["include_optimizer"] = True
    return out


# Kinds that ``scale`` leaves out unless they are selected explicitly.
NORMALISATION_KINDS = frozenset({"gamma", "beta", "moving_mean", "moving_variance"})


def normalisation_left_out(sel: Selection, info: TensorInfo) -> bool:
    """A normalisation parameter or statistic that a selection matches without naming it
    (by kind, name or layer class): scale and clip's bounds leave it alone by default."""
    named = sel.select or sel.kinds or sel.layer_types
    return info.kind in NORMALISATION_KINDS and not named and sel.matches(info)


# -- scale ------------------------------------------------------------------------------------


class _ScaleOp(TensorOp):
    def __init__(
        self, info: TensorInfo, factor: float, via: str | None = None, divide: bool = False
    ) -> None:
        super().__init__(info)
        self.factor = factor
        self.via = via  # a quantized layer: the factor reaches its kernel through this scale
        self.divide = divide  # codes / scale (int8, per-channel int4), else codes * scale

    def apply(self, where: Block, block: np.ndarray, count: bool = True) -> np.ndarray:
        if self.via is not None:  # a quantized layer's scale: refuse a malformed one
            if block.dtype.kind != "f":
                raise UnsupportedError(
                    f"{literal(self.info.name)}: a quantized layer's scale stored as "
                    f"{block.dtype}, not floats: a malformed layer, refused"
                )
            if not np.isfinite(block).all() or (block == 0).any():
                raise UnsupportedError(
                    f"{literal(self.info.name)}: a quantized layer's scale holds zero or "
                    "NaN/Inf (its weights dequantize to NaN/Inf): repair the scale first "
                    "(set), refused"
                )
        return scalemod.scale(block, 1.0 / self.factor if self.divide else self.factor)

    def apply_summarized(self, where: Block, block: np.ndarray) -> tuple[np.ndarray, Any] | None:
        if self.via is not None or block.dtype != np.float32:
            return None
        factor = np.float32(1.0 / self.factor if self.divide else self.factor)
        return native.map_pair_f32(block, 0, float(factor), 0.0)  # scale.scale's product

    def figures(self) -> Figures:
        return ScaleFigures(self.factor, self.via, self.divide)


# A natively quantized layer's codes are dequantized with its scale: as codes / scale
# (int8, per-channel int4: scaling the weights divides the scale) or, for sub-channel
# int4 ("int4/128") and TensorFlow Lite's codes ("int8-affine"), as (codes - zero) *
# scale (scaling them multiplies it).
SCALE_OF = {"kernel_scale": "kernel", "embeddings_scale": "embeddings"}


def codes_of(info: TensorInfo) -> TensorInfo | None:
    """For the scale of a quantized layer's codes: the weight it stands for (named and
    typed as that float weight), which selections and factors are decided on."""
    if not info.quantized or info.kind not in SCALE_OF:
        return None
    kind = SCALE_OF[info.kind]
    return replace(
        info,
        name=info.name.rsplit("/", 1)[0] + "/" + kind,
        kind=kind,
        dtype="float32",
        quantized=None,
    )


def refuse_quantized(step: Step, tensors: list[TensorInfo]) -> None:
    """Clip and quantize act on float values; a quantized layer's integer codes cannot be
    changed exactly by them: refused, naming the layer, rather than silently skipped."""
    loose = replace(step.selection, floats_only=False)
    for t in tensors:
        if t.quantized and t.kind in ("kernel", "embeddings") and loose.matches(t):
            layer = t.name.rsplit("/", 1)[0]
            raise UnsupportedError.naming(
                f"{literal(t.name)} is stored quantized ({literal(t.quantized)} codes): "
                f"{step.command} works on float weights and cannot change the codes exactly; "
                f"leave the layer out ({{exclude}} '{literal(layer)}/*'), give {{requantize}} "
                f"(new codes under the same scales), or {step.command} the float model "
                "before quantizing it"
            )


@dataclass
class ScaleStep(Step):
    """Multiply by ``factor``; ``by_type``/``by_layer`` override it per layer class / layer glob."""

    selection: Selection
    factor: float | None = None
    by_type: dict[str, float] = field(default_factory=dict)
    by_layer: dict[str, float] = field(default_factory=dict)
    command = "scale"

    def __post_init__(self) -> None:
        if self.factor is not None and not math.isfinite(self.factor):
            raise ParameterError(f"{{factor}} must be a finite number, got {self.factor}")
        for param, rules in (("by_type", self.by_type), ("by_layer", self.by_layer)):
            for key, f in rules.items():
                if not math.isfinite(f):
                    raise ParameterError(
                        f"{{{param}}} {literal(key)}: the factor must be a finite number, got {f}"
                    )
        if self.factor is None and not self.by_type and not self.by_layer:
            raise ParameterError("give a {factor}, {by_type} TYPE=F or {by_layer} GLOB=F")

    def factor_for(self, info: TensorInfo) -> float | None:
        """FACTOR, unless a rule matches: a ``by_layer`` rule beats a ``by_type`` rule
        (the more specific), and among rules of one kind the last matching one wins."""
        factor = self.factor
        if info.layer_class and info.layer_class in self.by_type:
            factor = self.by_type[info.layer_class]
        for pattern, f in self.by_layer.items():
            if self._layer_matches(info, pattern):
                factor = f
        return factor

    def selects(self, info: TensorInfo) -> bool:
        weight = codes_of(info) or info
        return (
            self.selection.matches(weight)
            and not self.leaves_out(weight)
            and self.factor_for(weight) is not None
        )

    def check(self, tensors: list[TensorInfo]) -> None:
        """Every per-class and per-layer rule must apply to something in this file."""
        if self.by_type:
            classes = sorted({t.layer_class for t in tensors if t.layer_class})
            if not classes:
                raise ParameterError(
                    "{by_type} needs layer classes, and this file records none (no model config)"
                )
            missing = [k for k in self.by_type if k not in classes]
            if missing:
                raise ParameterError(
                    f"{{by_type}} {literal(', '.join(missing))}: no layer of that class here "
                    f"(classes here: {literal(', '.join(classes))})"
                )
        for pattern in self.by_layer:
            if not any(self._layer_matches(t, pattern) for t in tensors if not t.optimizer):
                layers = sorted(
                    {t.layer or t.name.rsplit("/", 1)[0] for t in tensors if not t.optimizer}
                )
                shown = ", ".join(layers[:6]) + (", ..." if len(layers) > 6 else "")
                raise ParameterError(
                    f"{{by_layer}} {literal(pattern)}: matches no layer (layers here include "
                    f"{literal(shown)})"
                )

    @staticmethod
    def _layer_matches(info: TensorInfo, pattern: str) -> bool:
        layer = info.layer or info.name.rsplit("/", 1)[0]
        return (
            fnmatch.fnmatchcase(layer, pattern)
            or fnmatch.fnmatchcase(info.name, pattern)
            or fnmatch.fnmatchcase(info.name.rsplit("/", 1)[0], pattern)
        )

    def leaves_out(self, info: TensorInfo) -> bool:
        """Normalisation parameters and statistics are not "the weights": they are scaled
        only when named (by kind, name or layer class)."""
        return normalisation_left_out(self.selection, info)

    def why_nothing(self, tensors: list[TensorInfo]) -> str | None:
        matched = [t for t in tensors if self.selection.matches(codes_of(t) or t)]
        if (
            matched
            and self.factor is None
            and all(self.factor_for(codes_of(t) or t) is None for t in matched)
        ):
            return (
                "no {by_type} or {by_layer} rule names their layers, and no {factor} is "
                "given for the rest"
            )
        if matched and all(self.leaves_out(codes_of(t) or t) for t in matched):
            return "normalisation tensors are scaled only when named: {kind} or {select}"
        return None

    def op(self, info: TensorInfo) -> TensorOp | None:
        weight = codes_of(info)
        factor = self.factor_for(weight or info)
        if factor is None:
            return None
        if weight is None:
            return _ScaleOp(info, factor)
        mode = info.quantized or ""
        affine = mode.endswith("-affine")  # TensorFlow Lite: (codes - zero) * scale
        if not (mode.startswith(("int8", "int4")) or affine):
            raise UnsupportedError(
                f"{literal(weight.name)}: scaling a {info.quantized}-quantized layer is not supported"
            )
        if factor == 0:
            raise UnsupportedError(
                f"{literal(weight.name)} is stored quantized: a factor of 0 cannot be written "
                "into its scale"
            )
        if affine and factor < 0:
            raise UnsupportedError(
                f"{literal(weight.name)} is stored quantized: TensorFlow Lite's kernels take a "
                "positive scale, so a negative factor cannot be written into it"
            )
        multiply = mode.startswith("int4/") or affine
        return _ScaleOp(info, factor, via=info.kind, divide=not multiply)

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.factor is not None:
            out["factor"] = self.factor
        if self.by_type:
            out["by_type"] = self.by_type
        if self.by_layer:
            out["by_layer"] = self.by_layer
        return out


# -- clip -------------------------------------------------------------------------------------


class _ClipOp(TensorOp):
    def __init__(self, info: TensorInfo, step: ClipStep) -> None:
        super().__init__(info)
        self.step = step
        self.lo = step.min
        self.hi = step.max
        self.clipped = 0
        self.repaired = 0
        self.passes = 1 if (step.percentile is not None or step.sigma is not None) else 0
        self._stats = RunningStats()
        self._percentile = (
            clipmod.AbsPercentile(step.percentile, info.size)
            if step.percentile is not None
            else None
        )
        if step.abs_max is not None:
            self.lo, self.hi = -step.abs_max, step.abs_max

    def observe(self, pass_no: int, where: Block, block: np.ndarray) -> None:
        if pass_no == 0:
            self._stats.update(block)
            if self._percentile is not None:
                self._percentile.first(block)
        elif self._percentile is not None:
            self._percentile.second(block)

    def end_pass(self, pass_no: int) -> bool:
        step = self.step
        if pass_no == 0:
            s = self._stats.result()
            if step.sigma is not None:
                if s.mean is None or s.std is None:
                    self.lo = self.hi = None
                else:
                    self.lo, self.hi = clipmod.sigma_bounds(s.mean, s.std, step.sigma)
                return False
            assert self._percentile is not None
            if self._percentile.end_first(s.abs_max, s.count - s.nonfinite):
                self.passes = 2
                return True
        else:
            assert self._percentile is not None
            self._percentile.end_second()
        bound = self._percentile.value or 0.0
        self.lo, self.hi = -bound, bound
        return False

    def apply(self, where: Block, block: np.ndarray, count: bool = True) -> np.ndarray:
        y, c, r = clipmod.clip(block, self.lo, self.hi, self.step.nonfinite)
        if count:
            self.clipped += c
            self.repaired += r
        return y

    def apply_summarized(self, where: Block, block: np.ndarray) -> tuple[np.ndarray, Any] | None:
        if block.dtype != np.float32:
            return None
        with np.errstate(over="ignore"):  # (a bound past float32: clip.clip's own cast)
            lo = np.float32(-np.inf if self.lo is None else self.lo)
            hi = np.float32(np.inf if self.hi is None else self.hi)
        if lo == 0 or hi == 0 or np.isnan(lo) or np.isnan(hi):
            return None  # np.clip's sign of a zero result varies with its code path
        fused = native.map_pair_f32(block, 1, float(lo), float(hi))
        if fused is not None:
            self.clipped += fused[1][2]  # (every change is a clipped value)
        return fused

    def figures(self) -> Figures:
        pct = 100.0 * self.clipped / self.info.size if self.info.size else 0.0
        return ClipFigures(self.lo, self.hi, self.clipped, pct, self.repaired)


@dataclass
class ClipStep(Step):
    selection: Selection
    min: float | None = None
    max: float | None = None
    abs_max: float | None = None
    percentile: float | None = None
    sigma: float | None = None
    nonfinite: str = "keep"
    command = "clip"

    def __post_init__(self) -> None:
        modes = [
            self.min is not None or self.max is not None,
            self.abs_max is not None,
            self.percentile is not None,
            self.sigma is not None,
        ]
        if sum(modes) > 1:
            raise ParameterError("choose one of {min}/{max}, {abs_max}, {percentile} or {sigma}")
        if sum(modes) == 0 and self.nonfinite == "keep":
            raise ParameterError(
                "nothing to do: give bounds ({min}/{max}, {abs_max}, {percentile}, {sigma}) or {nonfinite}"
            )
        for name, v in (("min", self.min), ("max", self.max)):
            if v is not None and not math.isfinite(v):
                raise ParameterError(f"{{{name}}} must be a finite number, got {v}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ParameterError(f"{{min}} {self.min} is above {{max}} {self.max}")
        if self.abs_max is not None and not (math.isfinite(self.abs_max) and self.abs_max >= 0):
            raise ParameterError(f"{{abs_max}} must be a finite number >= 0, got {self.abs_max}")
        if self.percentile is not None and not (0 < self.percentile <= 100):
            raise ParameterError(f"{{percentile}} must be in (0, 100], got {self.percentile}")
        if self.sigma is not None and not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ParameterError(f"{{sigma}} must be a finite number > 0, got {self.sigma}")
        if self.nonfinite not in clipmod.NONFINITE:
            raise ParameterError(f"{{nonfinite}} must be one of {', '.join(clipmod.NONFINITE)}")

    def check(self, tensors: list[TensorInfo]) -> None:
        refuse_quantized(self, tensors)

    @property
    def bounded(self) -> bool:
        return any(
            v is not None for v in (self.min, self.max, self.abs_max, self.percentile, self.sigma)
        )

    def leaves_out(self, info: TensorInfo) -> bool:
        """Bounds are for weights: BatchNormalization's gamma and moving variance (and
        the other normalisation tensors) are clipped only when named, as ``scale`` does;
        a NaN/Inf repair alone (``nonfinite``) reaches every tensor."""
        return self.bounded and normalisation_left_out(self.selection, info)

    def selects(self, info: TensorInfo) -> bool:
        return self.selection.matches(info) and not self.leaves_out(info)

    def op(self, info: TensorInfo) -> TensorOp | None:
        return _ClipOp(info, self)

    def params(self) -> dict[str, Any]:
        keys = ("min", "max", "abs_max", "percentile", "sigma")
        out: dict[str, Any] = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        out["nonfinite"] = self.nonfinite
        return out


# -- quantize ---------------------------------------------------------------------------------


class _QuantOp(TensorOp):
    passes = 1

    def __init__(self, info: TensorInfo, step: QuantizeStep) -> None:
        super().__init__(info)
        self.step = step
        assert step.bits is not None and step.scheme is not None  # set by QuantizeStep
        self.bits: int = step.bits
        self.scheme: str = step.scheme
        if step.granularity == "per-tensor":
            self.axis: int | None = None
        elif step.axis is not None:
            if not -info.ndim <= step.axis < info.ndim:
                raise ParameterError(
                    f"{literal(info.name)}: {{axis}} {step.axis} is out of range for shape {info.shape}"
                )
            self.axis = step.axis % info.ndim
        else:
            self.axis = qmod.channel_axis(info.layer_class, info.kind, info.ndim)
        n = info.shape[self.axis] if self.axis is not None else 1
        self.lo = np.full(n, np.inf)
        self.hi = np.full(n, -np.inf)
        self.signal = 0.0
        self.noise = 0.0
        self.max_err = 0.0

    def observe(self, pass_no: int, where: Block, block: np.ndarray) -> None:
        lo, hi = qmod.reduce_minmax(block, self.axis)
        span = self._channels(where, block)
        self.lo[span] = np.minimum(self.lo[span], lo)
        self.hi[span] = np.maximum(self.hi[span], hi)

    def _channels(self, where: Block, block: np.ndarray) -> slice:
        """The channels a block holds (a block may hold a part of the channel axis)."""
        if self.axis is None:
            return slice(0, 1)
        first = where.origin[self.axis]
        return slice(first, first + block.shape[self.axis])

    def end_pass(self, pass_no: int) -> bool:
        lo = np.where(np.isfinite(self.lo), self.lo, 0.0)
        hi = np.where(np.isfinite(self.hi), self.hi, 0.0)
        self.scale, self.zero = qmod.params(lo, hi, self.bits, self.scheme)
        return False

    def _bcast(self, v: np.ndarray, where: Block, block: np.ndarray) -> np.ndarray:
        if self.axis is None:
            return v.reshape(())
        v = v[self._channels(where, block)]
        return v.reshape(qmod.channel_shape(self.info.ndim, self.axis))

    def apply(self, where: Block, block: np.ndarray, count: bool = True) -> np.ndarray:
        span = self._channels(where, block)
        inner = math.prod(block.shape[self.axis + 1 :]) if self.axis is not None else block.size
        fast = native.fake_quant_f32(
            block,
            self.scale[span],
            self.zero[span],
            max(inner, 1),
            *qmod.qrange(self.bits, self.scheme),
        )
        if fast is not None:  # the same bytes as the numpy path below, in one pass
            y, (signal, noise, worst) = fast
            if count:
                self.signal += signal
                self.noise += noise
                self.max_err = max(self.max_err, worst)
            return y
        y = qmod.fake_quantize(
            block,
            self._bcast(self.scale, where, block),
            self._bcast(self.zero, where, block),
            self.bits,
            self.scheme,
        )
        if count:
            self._measure(block, y)
        return y

    def _measure(self, x: np.ndarray, y: np.ndarray) -> None:
        if x.dtype.kind == "f" and x.dtype.itemsize >= 4 and x.size:
            err = np.subtract(y, x, dtype=x.dtype).reshape(-1)
            lo, hi = float(err.min()), float(err.max())
            if math.isfinite(lo) and math.isfinite(hi):  # no NaN/Inf on either side
                xf = x.reshape(-1)
                self.signal += float(np.dot(xf, xf))
                self.noise += float(np.dot(err, err))
                self.max_err = max(self.max_err, -lo, hi)
                return
        xw = x.astype(np.float64)
        ok = np.isfinite(xw)
        err = np.where(ok, y.astype(np.float64) - xw, 0.0)
        self.signal += float(np.square(np.where(ok, xw, 0.0)).sum())
        self.noise += float(np.square(err).sum())
        if err.size:
            self.max_err = max(self.max_err, float(np.abs(err).max()))

    def figures(self) -> Figures:
        scale = np.asarray(self.scale)
        return QuantizeFigures(
            bits=self.bits,
            scheme=self.scheme,
            axis=self.axis,
            scale_min=float(scale.min()),
            scale_max=float(scale.max()),
            sqnr_db=qmod.sqnr_db(self.signal, self.noise),
            max_abs_error=self.max_err,
            half_step_max=float(scale.max()) / 2,
        )


class _CastOp(_QuantOp):
    passes = 0

    def __init__(self, info: TensorInfo, step: QuantizeStep) -> None:
        TensorOp.__init__(self, info)
        self.step = step
        self.signal = self.noise = self.max_err = 0.0

    @property
    def out_dtype(self) -> str:
        assert self.step.dtype is not None
        return self.step.dtype

    def apply(self, where: Block, block: np.ndarray, count: bool = True) -> np.ndarray:
        target = to_numpy(self.step.dtype or "float16")
        y = block.astype(target)
        if count:
            self._measure(block, y)
        return y

    def figures(self) -> Figures:
        assert self.step.dtype is not None
        return CastFigures(self.step.dtype, qmod.sqnr_db(self.signal, self.noise), self.max_err)


@dataclass
class QuantizeStep(Step):
    """Fake quantization (``bits``, ``scheme``, ``granularity``, ``axis``; defaults 8,
    symmetric, per-channel, the layer's output channels), or a cast to ``dtype``. The two
    exclude each other: a parameter of one given with the other is an error."""

    selection: Selection
    bits: int | None = None
    scheme: str | None = None
    granularity: str | None = None
    axis: int | None = None
    dtype: str | None = None
    command = "quantize"

    def __post_init__(self) -> None:
        if self.dtype is not None:
            given = [
                p for p in ("bits", "scheme", "granularity", "axis") if getattr(self, p) is not None
            ]
            if given:
                names = ", ".join("{" + p + "}" for p in given)
                raise ParameterError(
                    f"{{dtype}} stores the tensors in another float type; {names} "
                    "belong to fake quantization: give one or the other"
                )
            if self.dtype not in ("float16", "bfloat16"):
                raise ParameterError("{dtype} must be float16 or bfloat16")
            return
        self.bits = 8 if self.bits is None else self.bits
        self.scheme = self.scheme or "symmetric"
        self.granularity = self.granularity or "per-channel"
        if (
            isinstance(self.bits, bool)
            or not isinstance(self.bits, int)
            or not 2 <= self.bits <= 16
        ):
            raise ParameterError(f"{{bits}} must be a whole number from 2 to 16, got {self.bits!r}")
        if self.scheme not in qmod.SCHEMES:
            raise ParameterError(f"{{scheme}} must be one of {', '.join(qmod.SCHEMES)}")
        if self.granularity not in ("per-channel", "per-tensor"):
            raise ParameterError("{granularity} must be per-channel or per-tensor")

    def check(self, tensors: list[TensorInfo]) -> None:
        refuse_quantized(self, tensors)

    def selects(self, info: TensorInfo) -> bool:
        if not self.selection.matches(info):
            return False
        # Biases, normalisation parameters and other 1-D tensors only when named.
        return info.ndim >= 2 or self.selection.explicit

    def why_nothing(self, tensors: list[TensorInfo]) -> str | None:
        matched = [t for t in tensors if self.selection.matches(t)]
        if matched and all(t.ndim < 2 for t in matched):
            return "1-D tensors are quantized only when named: {select} or {kind}"
        return None

    def op(self, info: TensorInfo) -> TensorOp | None:
        if self.dtype is not None:
            return _CastOp(info, self) if info.dtype != self.dtype else None
        return _QuantOp(info, self)

    def params(self) -> dict[str, Any]:
        if self.dtype is not None:
            return {"dtype": self.dtype}
        out: dict[str, Any] = {
            "bits": self.bits,
            "scheme": self.scheme,
            "granularity": self.granularity,
        }
        if self.axis is not None:
            out["axis"] = self.axis
        return out


# -- prune ------------------------------------------------------------------------------------

# Kinds pruned by default: the kernels of Dense, Conv*, Embedding and attention layers
# (``weight`` of a 2-D+ tensor in a file without Keras kinds: a PyTorch state dict).
PRUNABLE_KINDS = frozenset(
    {"kernel", "embeddings", "depthwise_kernel", "pointwise_kernel", "recurrent_kernel", "weight"}
)


def compressible(sel: Selection, info: TensorInfo) -> bool:
    """``prune`` and ``cluster``'s selection: by default the kernels and embeddings (2-D
    or more) of model weights; any float tensor the user names."""
    if not sel.matches(info) or not info.is_float or info.size == 0:
        return False
    if sel.explicit:
        return True
    return info.ndim >= 2 and info.kind in PRUNABLE_KINDS and not info.optimizer


def why_not_compressible(sel: Selection, tensors: list[TensorInfo]) -> str | None:
    if any(sel.matches(t) for t in tensors):
        return (
            "by default only kernels and embeddings (2-D or more) are changed: name others "
            "with {select} or {kind}"
        )
    return None


class _PruneOp(TensorOp):
    """Zero the ``k`` smallest |x| of one tensor: radix passes find the threshold
    (``prunemod.AbsKth``), a census pass finds the last tie at it to zero (the first
    ones in storage order: ``prunemod.Ties``), then ``apply``. With a threshold given
    (``--scope global``: ``(bits, limit, value)`` in ``wide``'s bits), only ``apply``."""

    def __init__(
        self,
        info: TensorInfo,
        target: str,
        k: int,
        given: tuple[int, int, float] | None = None,
        wide: np.dtype | None = None,
    ) -> None:
        super().__init__(info)
        self.target = target
        self.dtype = wide if wide is not None else to_numpy(info.dtype)
        self.kth = prunemod.AbsKth(k, self.dtype, info.size) if given is None else None
        self.ties: prunemod.Ties | None = None
        self.bits, self.limit, self.threshold = given if given is not None else (0, -1, 0.0)
        if given is None:
            self.passes = 1
        self.zeroed = 0
        self.zeros_before = 0

    def observe(self, pass_no: int, where: Block, block: np.ndarray) -> None:
        assert self.kth is not None
        if self.ties is None:
            self.kth.observe(block)
        else:
            self.ties.observe(where.first, block)

    def end_pass(self, pass_no: int) -> bool:
        assert self.kth is not None
        if self.ties is None:
            if self.kth.end_pass():
                self.passes += 1  # another radix pass
                return True
            self.bits, self.threshold = self.kth.bits, self.kth.value
            if self.kth.all_ties:  # every tie zeroed: no census (the usual case)
                self.limit = self.info.size
                return False
            self.ties = prunemod.Ties(self.kth.k - self.kth.below, self.bits, self.dtype)
            self.passes += 1  # the census of ties
            return True
        self.limit = self.ties.limit
        return False

    def apply_summarized(self, where: Block, block: np.ndarray) -> tuple[np.ndarray, Any] | None:
        if block.dtype != np.float32 or self.dtype != np.float32:
            return None
        fused = native.map_pair_f32(block, 2, float(self.bits), 0.0, where.first, self.limit)
        if fused is not None:  # every change is a zeroed value; x's zeros were zeros before
            self.zeroed += fused[1][2]
            self.zeros_before += fused[1][0][4]
        return fused

    def apply(self, where: Block, block: np.ndarray, count: bool = True) -> np.ndarray:
        out, zeroed = prunemod.prune_block(block, self.dtype, self.bits, where.first, self.limit)
        if count:
            self.zeroed += zeroed
            self.zeros_before += int(np.count_nonzero(block == 0))
        return out

    def figures(self) -> Figures:
        n = self.info.size
        return PruneFigures(
            self.target, (self.zeros_before + self.zeroed) / n, self.zeroed, self.threshold
        )


class _PatternOp(TensorOp):
    """N:M along the input axis (-2): blocks aligned to whole groups."""

    def __init__(self, info: TensorInfo, n: int, m: int) -> None:
        super().__init__(info)
        self.n, self.m = n, m
        self.align = (-2, m)
        self.zeroed = 0
        self.zeros_before = 0

    def apply(self, where: Block, block: np.ndarray, count: bool = True) -> np.ndarray:
        out = prunemod.nm_block(block, self.n, self.m)
        if count:
            before = int(np.count_nonzero(block == 0))
            self.zeros_before += before
            self.zeroed += int(np.count_nonzero(out == 0)) - before
        return out

    def figures(self) -> Figures:
        sparsity = (self.zeros_before + self.zeroed) / self.info.size
        return PruneFigures(f"{self.n}:{self.m}", sparsity, self.zeroed, None)


@dataclass
class PruneStep(Step):
    """Magnitude pruning to ``sparsity`` (per tensor, ``scope="layer"``; or one
    threshold over every selected tensor, ``"global"``; ``by_layer`` per-layer targets),
    or N:M structured sparsity (``pattern=(n, m)``: n zeros in every m consecutive
    weights along a kernel's input axis). By default the kernels of Dense, Conv,
    Embedding and attention layers; a bias, normalisation or 1-D tensor only when named."""

    selection: Selection
    sparsity: float | None = None
    scope: str = "layer"
    by_layer: dict[str, float] = field(default_factory=dict)
    pattern: tuple[int, int] | None = None
    command = "prune"

    def __post_init__(self) -> None:
        if (self.sparsity is None and not self.by_layer) == (self.pattern is None):
            raise ParameterError("give {sparsity} (or {by_layer}) or {pattern}, one of them")
        for name, s in [
            ("sparsity", self.sparsity),
            *(("by_layer", v) for v in self.by_layer.values()),
        ]:
            if s is not None and not (
                isinstance(s, float | int) and 0 <= s < 1 and math.isfinite(s)
            ):
                raise ParameterError(f"{{{name}}} must be in [0, 1), got {s}")
        if self.scope not in ("layer", "global"):
            raise ParameterError(f"{{scope}} must be layer or global, got {literal(self.scope)}")
        if self.scope == "global" and (self.by_layer or self.pattern):
            raise ParameterError("{scope} global is one threshold: give no {by_layer} or {pattern}")
        if self.pattern is not None:
            n, m = self.pattern
            if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m <= 64):
                raise ParameterError(f"{{pattern}} N:M needs 0 < N < M <= 64, got {n}:{m}")
        self._global: dict[str, tuple[int, int, float]] = {}

    def check(self, tensors: list[TensorInfo]) -> None:
        refuse_quantized(self, tensors)
        for pattern in self.by_layer:  # a rule that reaches nothing is an error, not a no-op
            if not any(
                fnmatch.fnmatchcase(t.layer or "", pattern) or fnmatch.fnmatchcase(t.name, pattern)
                for t in tensors
                if self.selects(t)
            ):
                raise ParameterError(
                    f"{{by_layer}} {literal(pattern)} matches no layer or tensor that is pruned"
                )

    def selects(self, info: TensorInfo) -> bool:
        if self.pattern is not None and info.ndim < 2:
            return False
        return compressible(self.selection, info)

    def why_nothing(self, tensors: list[TensorInfo]) -> str | None:
        return why_not_compressible(self.selection, tensors)

    def target_for(self, info: TensorInfo) -> float | None:
        for pattern, s in reversed(list(self.by_layer.items())):  # the last rule wins
            layer = info.layer or ""
            if fnmatch.fnmatchcase(layer, pattern) or fnmatch.fnmatchcase(info.name, pattern):
                return s
        return self.sparsity

    def prepare(
        self, store: Store, chosen: list[TensorInfo], block_elems: int = BLOCK_ELEMS
    ) -> None:
        """``scope="global"``: one exact threshold over every chosen tensor (their |x|
        compared as float64), and the ties at it allotted in model order."""
        if self.scope != "global" or not chosen or self.sparsity is None:
            return
        n = sum(t.size for t in chosen)
        k = prunemod.to_zero(n, self.sparsity)
        if k == 0:
            return
        wide = np.dtype(np.float64)
        kth = prunemod.AbsKth(k, wide)
        while True:
            for t in chosen:
                for _, block in store.blocks(t, block_elems):
                    kth.observe(block)
            if not kth.end_pass():
                break
        if kth.all_ties:  # every tie zeroed: no census
            for t in chosen:
                self._global[t.path] = (kth.bits, t.size, kth.value)
            return
        ties = prunemod.Ties(k - kth.below, kth.bits, wide)
        for t in chosen:  # model order: the first ties of the first tensors
            ties.limit = -1
            for where, block in store.blocks(t, block_elems):
                ties.observe(where.first, block)
            self._global[t.path] = (kth.bits, ties.limit, kth.value)

    def op(self, info: TensorInfo) -> TensorOp | None:
        if self.pattern is not None:
            return _PatternOp(info, *self.pattern)
        if self.scope == "global":
            given = self._global.get(info.path)
            if given is None:
                return None  # nothing to zero
            return _GlobalPruneOp(info, f"{100 * (self.sparsity or 0):g}% (global)", given)
        target = self.target_for(info)
        if target is None:
            return None
        k = prunemod.to_zero(info.size, target)
        if k == 0:
            return None
        return _PruneOp(info, f"{100 * target:g}%", k)

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.pattern is not None:
            out["pattern"] = f"{self.pattern[0]}:{self.pattern[1]}"
        if self.sparsity is not None:
            out["sparsity"] = self.sparsity
            out["scope"] = self.scope
        if self.by_layer:
            out["by_layer"] = dict(self.by_layer)
        return out


class _GlobalPruneOp(_PruneOp):
    """A tensor of ``--scope global``: the float64 threshold and its last tie to zero."""

    def __init__(self, info: TensorInfo, target: str, given: tuple[int, int, float]) -> None:
        super().__init__(info, target, 0, given, wide=np.dtype(np.float64))


# -- cluster ----------------------------------------------------------------------------------


class _ClusterOp(TensorOp):
    """k-means of one tensor's values (or of each channel's): pass 0 the range and the
    initialisation's sample, then one pass per Lloyd iteration, then ``apply`` writes
    each value's centroid."""

    passes = 1

    def __init__(self, info: TensorInfo, step: ClusterStep) -> None:
        super().__init__(info)
        self.step = step
        self.axis = (
            qmod.channel_axis(info.layer_class, info.kind, info.ndim) if step.per_channel else None
        )
        channels = info.shape[self.axis] if self.axis is not None else 1
        self.per = info.size // channels  # values per channel
        self.stride = clustermod.sample_stride(self.per)
        self.lo = np.full(channels, np.inf)
        self.hi = np.full(channels, -np.inf)
        self.samples: list[list[np.ndarray]] = [[] for _ in range(channels)]
        self.lloyd: list[clustermod.Lloyd] = []
        self.signal = self.noise = self.max_err = 0.0
        self.distinct: set[float] = set()

    def _split(
        self, where: Block, block: np.ndarray
    ) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
        """(channel, its values in the block, their index within the channel, where they
        are in the block: None for the whole block), the flat indexes worked out once."""
        flat = block.reshape(-1)
        if self.axis is None:
            return [(0, flat, np.arange(block.size) + where.first, None)]
        coords = np.unravel_index(np.arange(block.size) + where.first, self.info.shape)
        rest = [c for i, c in enumerate(coords) if i != self.axis]
        dims = [d for i, d in enumerate(self.info.shape) if i != self.axis]
        within = np.ravel_multi_index(rest, dims) if rest else np.zeros(block.size, np.int64)
        channel = coords[self.axis]
        out = []
        for c in np.unique(channel):
            sel = channel == c
            out.append((int(c), flat[sel], within[sel], sel))
        return out

    def observe(self, pass_no: int, where: Block, block: np.ndarray) -> None:
        if pass_no == 0 and not np.isfinite(block).all():
            raise UsageError(f"{self.info.name}: NaN or Inf: repair it first (clip --nonfinite)")
        for c, values, within, _ in self._split(where, block):
            if pass_no == 0:
                v = values.astype(np.float64)
                self.lo[c] = min(self.lo[c], float(v.min()))
                self.hi[c] = max(self.hi[c], float(v.max()))
                self.samples[c].append(v[within % self.stride == 0])
            else:
                self.lloyd[c].observe(values)

    def end_pass(self, pass_no: int) -> bool:
        if pass_no == 0:
            for c, parts in enumerate(self.samples):
                sample = np.concatenate(parts) if parts else np.zeros(0)
                start = clustermod.initial(
                    sample,
                    self.step.clusters,
                    self.step.init,
                    self.lo[c],
                    self.hi[c],
                    self.step.seed or 0,
                )
                self.lloyd.append(clustermod.Lloyd(start))
            self.samples = []
            self.passes += 1
            return True
        going = [lloyd.step() for lloyd in self.lloyd]
        if any(going):
            self.passes += 1
            return True
        return False

    def apply(self, where: Block, block: np.ndarray, count: bool = True) -> np.ndarray:
        flat = np.empty(block.size, dtype=block.dtype)
        for c, values, _, sel in self._split(where, block):
            cents = self.lloyd[c].centroids
            mapped = cents[clustermod.assign(values, cents)].astype(block.dtype)
            if sel is None:
                flat[:] = mapped
            else:
                flat[sel] = mapped
        y = flat.reshape(block.shape)
        if count:
            x64, y64 = block.astype(np.float64).ravel(), y.astype(np.float64).ravel()
            err = y64 - x64
            self.signal += float(np.dot(x64, x64))
            self.noise += float(np.dot(err, err))
            if err.size:
                self.max_err = max(self.max_err, float(np.abs(err).max()))
            if len(self.distinct) <= 1 << 16:
                self.distinct.update(np.unique(y64).tolist())
        return y

    def figures(self) -> Figures:
        return ClusterFigures(
            clusters=self.step.clusters,
            per_channel=self.axis is not None,
            distinct=len(self.distinct),
            iterations=max((lloyd.iterations for lloyd in self.lloyd), default=0),
            sqnr_db=qmod.sqnr_db(self.signal, self.noise),
            max_abs_error=self.max_err,
            rms_error=math.sqrt(self.noise / max(self.info.size, 1)),
        )


@dataclass
class ClusterStep(Step):
    """Weight clustering: each selected tensor (or each of its output channels,
    ``per_channel``) left with at most ``clusters`` distinct values, by exact 1-D k-means
    (``transforms/cluster.py``). Default selection as ``prune``'s."""

    selection: Selection
    clusters: int = 16
    per_channel: bool = False
    init: str = "kmeans++"
    seed: int | None = None  # kmeans++'s (default 0); an error with another init
    command = "cluster"

    def __post_init__(self) -> None:
        if (
            isinstance(self.clusters, bool)
            or not isinstance(self.clusters, int)
            or not 2 <= self.clusters <= 65536
        ):
            raise ParameterError(
                f"{{clusters}} must be a whole number from 2 to 65536, got {self.clusters!r}"
            )
        if self.init not in clustermod.INITS:
            raise ParameterError(f"{{init}} must be one of {', '.join(clustermod.INITS)}")
        if self.seed is not None and self.init != "kmeans++":
            raise ParameterError(
                f"{{seed}} seeds kmeans++'s sampling: {{init}} {self.init} takes none"
            )
        if self.seed is None:
            self.seed = 0 if self.init == "kmeans++" else None
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise ParameterError(f"{{seed}} must be from 0 to 2**32-1, got {self.seed}")

    def check(self, tensors: list[TensorInfo]) -> None:
        refuse_quantized(self, tensors)

    def selects(self, info: TensorInfo) -> bool:
        return compressible(self.selection, info)

    def why_nothing(self, tensors: list[TensorInfo]) -> str | None:
        return why_not_compressible(self.selection, tensors)

    def op(self, info: TensorInfo) -> TensorOp | None:
        return _ClusterOp(info, self)

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"clusters": self.clusters, "init": self.init}
        if self.per_channel:
            out["per_channel"] = True
        if self.init == "kmeans++":
            out["seed"] = self.seed
        return out
