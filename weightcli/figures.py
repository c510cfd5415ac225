"""What one step did to one tensor, as typed records that render themselves: ``text()``
for the table's Transform cell, ``to_json()`` for ``--json`` (the keys scripts read).

Each op of ``steps.py`` and of the commands returns one of these from ``figures()``; the
report shows ``text()`` and never decodes keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from weightcli.grid import fmt_num

JSON = dict[str, Any]


class Figures:
    """The base: a record with its JSON and its one-line text."""

    def to_json(self) -> JSON:
        raise NotImplementedError

    def text(self) -> str:
        raise NotImplementedError


class NoFigures(Figures):
    """An op that reports nothing of its own."""

    def to_json(self) -> JSON:
        return {}

    def text(self) -> str:
        return ""


@dataclass
class ScaleFigures(Figures):
    factor: float
    via: str | None = None  # a quantized layer: the factor reaches its weights through this scale
    divide: bool = False  # codes / scale: the scale is divided by the factor

    def to_json(self) -> JSON:
        if self.via is not None:
            return {"factor": self.factor, "via": self.via, "divide": self.divide}
        return {"factor": self.factor}

    def text(self) -> str:
        if self.via is not None:
            how = "/" if self.divide else "x"
            return f"x{fmt_num(self.factor)} (as {self.via} {how} {fmt_num(self.factor)})"
        return f"x{fmt_num(self.factor)}"


@dataclass
class ClipFigures(Figures):
    min: float | None
    max: float | None
    clipped: int
    clipped_pct: float
    repaired: int

    def to_json(self) -> JSON:
        return {
            "min": self.min,
            "max": self.max,
            "clipped": self.clipped,
            "clipped_pct": self.clipped_pct,
            "repaired": self.repaired,
        }

    def text(self) -> str:
        if self.min is None and self.max is None:
            return f"repaired {self.repaired} NaN/Inf"
        bounds = f"[{fmt_num(self.min)}, {fmt_num(self.max)}]"
        text = f"clipped {self.clipped_pct:.2f}% {bounds}"
        if self.repaired:
            text += f", repaired {self.repaired}"
        return text


@dataclass
class QuantizeFigures(Figures):
    bits: int
    scheme: str
    axis: int | None
    scale_min: float
    scale_max: float
    sqnr_db: float | None
    max_abs_error: float
    half_step_max: float

    def to_json(self) -> JSON:
        return {
            "bits": self.bits,
            "scheme": self.scheme,
            "axis": self.axis,
            "scale_min": self.scale_min,
            "scale_max": self.scale_max,
            "sqnr_db": self.sqnr_db,
            "max_abs_error": self.max_abs_error,
            "half_step_max": self.half_step_max,
        }

    def text(self) -> str:
        scale = (
            fmt_num(self.scale_min)
            if self.scale_min == self.scale_max
            else f"{fmt_num(self.scale_min)}..{fmt_num(self.scale_max)}"
        )
        return (
            f"{self.bits}-bit, scale {scale}, SQNR {fmt_num(self.sqnr_db, 3)} dB, "
            f"max err {fmt_num(self.max_abs_error)}"
        )


@dataclass
class PruneFigures(Figures):
    """``prune``: the target, the sparsity reached (exact zeros after / elements), the
    elements this run zeroed, and the |x| threshold (None for an N:M pattern)."""

    target: str  # "50%" or "2:4"
    sparsity: float  # achieved, in [0, 1]
    zeroed: int
    threshold: float | None

    def to_json(self) -> JSON:
        return {
            "target": self.target,
            "sparsity": self.sparsity,
            "zeroed": self.zeroed,
            "threshold": self.threshold,
        }

    def text(self) -> str:
        at = f", |x| <= {fmt_num(self.threshold)}" if self.threshold is not None else ""
        return f"sparsity {100 * self.sparsity:.2f}% (target {self.target}){at}"


@dataclass
class ClusterFigures(Figures):
    """``cluster``: clusters per tensor (or per channel), the distinct values written,
    Lloyd iterations (the most over channels), and the error as ``quantize`` reports it."""

    clusters: int
    per_channel: bool
    distinct: int
    iterations: int
    sqnr_db: float | None
    max_abs_error: float
    rms_error: float

    def to_json(self) -> JSON:
        return {
            "clusters": self.clusters,
            "per_channel": self.per_channel,
            "distinct": self.distinct,
            "iterations": self.iterations,
            "sqnr_db": self.sqnr_db,
            "max_abs_error": self.max_abs_error,
            "rms_error": self.rms_error,
        }

    def text(self) -> str:
        per = " per channel" if self.per_channel else ""
        return (
            f"{self.clusters} clusters{per} ({self.distinct} values, {self.iterations} iter), "
            f"SQNR {fmt_num(self.sqnr_db, 3)} dB, max err {fmt_num(self.max_abs_error)}"
        )


@dataclass
class CastFigures(Figures):
    dtype: str
    sqnr_db: float | None
    max_abs_error: float

    def to_json(self) -> JSON:
        return {"dtype": self.dtype, "sqnr_db": self.sqnr_db, "max_abs_error": self.max_abs_error}

    def text(self) -> str:
        return (
            f"-> {self.dtype}, SQNR {fmt_num(self.sqnr_db, 3)} dB, "
            f"max err {fmt_num(self.max_abs_error)}"
        )


@dataclass
class KerasInt8Figures(Figures):
    scale_min: float
    scale_max: float
    max_abs_error: float
    extra: JSON = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {
            "store": "keras-int8",
            "scale_min": self.scale_min,
            "scale_max": self.scale_max,
            "max_abs_error": self.max_abs_error,
            **self.extra,
        }

    def text(self) -> str:
        return (
            f"Keras int8, scale {fmt_num(self.scale_min)}..{fmt_num(self.scale_max)}, "
            f"max err {fmt_num(self.max_abs_error)}"
        )


@dataclass
class MergeFigures(Figures):
    method: str
    weights: list[float]
    kept_fraction: float | None = None  # the sparsifying methods: task vectors' values kept
    sign_agreement: float | None = None  # with sign consensus: elements all inputs agree on
    coefficients: list[float] | None = None  # slerp (s0, s1), model-stock (t, 1 - t)

    def to_json(self) -> JSON:
        out: JSON = {"method": self.method, "weights": self.weights}
        if self.kept_fraction is not None:
            out["kept_fraction"] = self.kept_fraction
        if self.sign_agreement is not None:
            out["sign_agreement"] = self.sign_agreement
        if self.coefficients is not None:
            out["coefficients"] = self.coefficients
        return out

    def text(self) -> str:
        text = self.method
        if self.weights:
            text += ", weights " + ", ".join(fmt_num(w, 3) for w in self.weights)
        if self.kept_fraction is not None:
            text += f"; kept {100 * self.kept_fraction:.1f}%"
        if self.sign_agreement is not None:
            text += f", sign agreement {100 * self.sign_agreement:.1f}%"
        if self.coefficients is not None:
            text += "; coefficients " + ", ".join(fmt_num(c, 4) for c in self.coefficients)
        return text


@dataclass
class LoraFigures(Figures):
    """``lora merge``: which adapter entry (index and layer), its rank and scale, and
    the Frobenius norm of the update added to the kernel."""

    layer: str
    rank: int
    scale: float
    update_norm: float

    def to_json(self) -> JSON:
        return {
            "adapter_layer": self.layer,
            "rank": self.rank,
            "scale": self.scale,
            "update_norm": self.update_norm,
        }

    def text(self) -> str:
        return (
            f"LoRA layer {self.layer}, rank {self.rank}, scale {fmt_num(self.scale, 4)}; "
            f"update norm {fmt_num(self.update_norm, 4)}"
        )


@dataclass
class InitFigures(Figures):
    initializer: str
    fan_in: float
    fan_out: float
    seed: int
    params: JSON = field(default_factory=dict)  # limit, stddev, value, mean, ...

    def to_json(self) -> JSON:
        return {
            "initializer": self.initializer,
            "fan_in": self.fan_in,
            "fan_out": self.fan_out,
            **self.params,
            "seed": self.seed,
        }

    def text(self) -> str:
        what = ", ".join(
            f"{k} {fmt_num(self.params[k])}"
            for k in ("limit", "stddev", "value", "mean", "minval", "maxval", "gain")
            if k in self.params
        )
        return (
            f"{self.initializer} (fan_in {self.fan_in}, fan_out {self.fan_out}"
            f"{', ' + what if what else ''}; seed {self.seed})"
        )


@dataclass
class SetFigures(Figures):
    set_from: str
    cast: str | None = None  # "float64 -> float32"
    max_cast_error: float | None = None

    def to_json(self) -> JSON:
        out: JSON = {"set_from": self.set_from}
        if self.cast is not None:
            out["cast"] = self.cast
            out["max_cast_error"] = self.max_cast_error
        return out

    def text(self) -> str:
        text = f"set from {self.set_from}"
        if self.cast is not None:
            text += f", {self.cast} (max change {fmt_num(self.max_cast_error)})"
        return text


@dataclass
class CopyFigures(Figures):
    source: str
    how: str  # name, rename, order

    def to_json(self) -> JSON:
        return {"source": self.source, "how": self.how}

    def text(self) -> str:
        return ""  # the transplant table says where each tensor came from
