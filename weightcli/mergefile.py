"""What a merge is asked to do, from flags or from a merge file, checked before any
tensor is read.

A merge file is YAML (or JSON) in mergekit's spirit::

    merge_method: dare_ties          # or dare-ties: every method, - or _
    base_model: base.keras           # paths relative to this file
    models:
      - model: ft1.keras
        parameters:
          weight: 1.0
          density: [1.0, 0.7, 0.3]   # a gradient over model depth
      - model: ft2.keras
        parameters:
          weight:
            - filter: "*attention*"  # a glob on the tensor or layer name; without
              value: 0.5             # * ? [ a substring, as mergekit matches
            - value: 1.0             # no filter: every other tensor
          density: 0.5
    parameters:                      # the method's own, and defaults for every model
      lambda: 1.0
      seed: 7

A parameter's value is a number (or true/false), a gradient (a list of numbers: the
value at a tensor of depth f in [0, 1] interpolated linearly between the list's
evenly spaced points, mergekit's ``evaluate_setting``), or a list of ``filter``/``value``
rules, the first that matches winning. Depth: the tensor's layer's place among the
merged layers in model order, first 0, last 1. Every key is checked, every path and
parameter, and every parameter is evaluated at every merged tensor and range-checked
before a byte of a tensor is read; a filter that matches no tensor is an error.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightcli.errors import ParameterError, UsageError, literal
from weightcli.stores import capped
from weightcli.stores.remote import as_path
from weightcli.tensor import TensorInfo
from weightcli.transforms.merge import DEFAULTS, METHODS, Method, method_named

MERGE_FILE_BYTES = 1 << 20
Value = float | bool
Gradient = tuple[float, ...]


@dataclass(frozen=True)
class Setting:
    """One parameter: rules of (filter or None, a value or a gradient), first match wins."""

    rules: tuple[tuple[str | None, Value | Gradient], ...]

    @classmethod
    def of(cls, value: Value | Gradient) -> Setting:
        return cls(((None, value),))

    def at(self, info: TensorInfo, depth: float) -> Value | None:
        for pattern, value in self.rules:
            if pattern is None or matches(pattern, info):
                return evaluate(value, depth)
        return None

    def filters(self) -> list[str]:
        return [p for p, _ in self.rules if p is not None]


def matches(pattern: str, info: TensorInfo) -> bool:
    """A glob (with * ? [) on the tensor's or its layer's name; else a substring."""
    names = [info.name, *(info.aliases or ()), *([info.layer] if info.layer else [])]
    if any(c in pattern for c in "*?["):
        return any(fnmatch.fnmatchcase(n, pattern) for n in names)
    return any(pattern in n for n in names)


def evaluate(value: Value | Gradient, depth: float) -> Value:
    if not isinstance(value, tuple):
        return value
    if len(value) == 1:
        return value[0]
    scaled = depth * (len(value) - 1)
    i0 = min(int(scaled), len(value) - 1)
    i1 = min(len(value) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * value[i0] + frac * value[i1]


@dataclass(frozen=True)
class MergeSpec:
    """A merge: the method, the inputs in order, the base, each input's parameters and
    the general ones (``Setting``s), and the merge file as written (for the history)."""

    method: Method
    inputs: tuple[Path, ...]
    base: Path | None = None
    per_input: tuple[dict[str, Setting], ...] = ()
    general: dict[str, Setting] = field(default_factory=dict)
    document: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        m = self.method
        n = len(self.inputs)
        if m.kind == "slerp" and n != 2:
            raise ParameterError(
                f"{{method}} slerp interpolates two models (t = 0: the first), got {n}"
            )
        if m.name == "model-stock" and n < 2:
            raise ParameterError("{method} model-stock needs {base} and at least two models")
        if n < 1 or (not m.base and n < 2):
            raise ParameterError("merge needs at least two inputs")
        if m.base and self.base is None:
            raise ParameterError(f"{{method}} {m.name} needs {{base}} BASE")
        if not m.base and self.base is not None:
            raise ParameterError(f"{{base}} does not go with {{method}} {m.name}")
        for key in ("decay",) if m.name == "ema" else ("t",) if m.kind == "slerp" else ():
            if key not in self.general:
                raise ParameterError(f"{{method}} {m.name} needs {{{key}}}")
        allowed_general = set(m.general) | set(m.per_input)
        for key in self.general:
            if key not in allowed_general:
                raise ParameterError(f"{{{key}}} does not go with {{method}} {m.name}")
        for settings in self.per_input:
            for key in settings:
                if key not in m.per_input:
                    raise ParameterError(
                        f"{{{key}}} is not a per-model parameter of {{method}} {m.name}"
                        + (f" (it takes {', '.join(m.per_input)})" if m.per_input else "")
                    )

    def value(self, key: str, input_no: int | None, info: TensorInfo, depth: float) -> Value:
        """A parameter at one tensor: the input's own setting, else the general one,
        else the default."""
        if input_no is not None and key in self.per_input[input_no]:
            got = self.per_input[input_no][key].at(info, depth)
            if got is not None:
                return got
        if key in self.general:
            got = self.general[key].at(info, depth)
            if got is not None:
                return got
        if key == "normalize":
            return self.method.normalize
        if key == "rescale":
            return self.method.rescale
        if key == "seed":
            return 0
        return DEFAULTS[key]

    def filters(self) -> list[str]:
        out = [p for s in self.general.values() for p in s.filters()]
        for settings in self.per_input:
            out += [p for s in settings.values() for p in s.filters()]
        return out

    def check_values(self, chosen: list[TensorInfo], depths: dict[str, float]) -> None:
        """Every parameter evaluated at every merged tensor, and range-checked."""
        for pattern in self.filters():
            if not any(matches(pattern, t) for t in chosen):
                raise ParameterError(f"the filter {literal(pattern)} matches no merged tensor")
        m = self.method
        for key, setting in [
            *self.general.items(),
            *(kv for settings in self.per_input for kv in settings.items()),
        ]:
            for _, value in setting.rules:  # a gradient's every point, wherever it lands
                for point in value if isinstance(value, tuple) else (value,):
                    check(key, point, None, m)
        for t in chosen:
            d = depths[t.path]
            for i in range(len(self.inputs)):
                for key in m.per_input:
                    check(key, self.value(key, i, t, d), t, m)
            for key in m.general:
                if key in self.general or key in ("lambda",):
                    check(key, self.value(key, None, t, d), t, m)
            if m.sparsify == "della":
                for i in range(len(self.inputs)):
                    dens = float(self.value("density", i, t, d))
                    eps = float(self.value("epsilon", i, t, d))
                    if not (dens - eps > 0 and dens + eps < 1):
                        raise ParameterError(
                            f"{literal(t.name)}: {{density}} {dens:g} +/- {{epsilon}} {eps:g} "
                            "must stay inside (0, 1) (DELLA's keep probabilities)"
                        )


RANGES: dict[str, tuple[float, float, bool, bool]] = {
    # key: (low, high, low inclusive, high inclusive)
    "density": (0.0, 1.0, False, True),
    "gamma": (0.0, 1.0, True, False),
    "epsilon": (0.0, 0.5, True, False),
    "t": (0.0, 1.0, True, True),
    "decay": (0.0, 1.0, False, False),
}


def check(key: str, value: Value, info: TensorInfo | None, method: Method) -> None:
    where = f"{literal(info.name)}: " if info is not None else ""
    if key in ("normalize", "rescale"):
        if not isinstance(value, bool):
            raise ParameterError(f"{where}{{{key}}} is true or false, got {literal(repr(value))}")
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParameterError(
            f"{where}{{{key}}} must be a finite number, got {literal(repr(value))}"
        )
    if key == "seed":
        if int(value) != value or value < 0:
            raise ParameterError(f"{{seed}} must be a whole number >= 0, got {value}")
        return
    if key in RANGES:
        lo, hi, lo_in, hi_in = RANGES[key]
        ok = (value >= lo if lo_in else value > lo) and (value <= hi if hi_in else value < hi)
        if not ok:
            shown = f"{'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"
            raise ParameterError(f"{where}{{{key}}} must be in {shown}, got {value:g}")


# -- the merge file --------------------------------------------------------------------

TOP_KEYS = {"merge_method", "base_model", "models", "parameters"}
MODEL_KEYS = {"model", "parameters"}


def load(path: Path) -> MergeSpec:
    """Parse a merge file; each mistake is one line naming where it is."""
    import yaml  # a core dependency, imported only by merge files

    data = capped.read_bytes(path, MERGE_FILE_BYTES, "merge file")

    class _Loader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:  # no aliases: no bombs
            if self.check_event(yaml.AliasEvent):
                raise UsageError(f"{path}: YAML aliases (*name) are not accepted in a merge file")
            return super().compose_node(parent, index)

    try:
        doc = yaml.load(data, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise UsageError(f"{path}: nested too deeply to be a merge file") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {literal(str(exc).splitlines()[0])}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: a merge file is a mapping (merge_method, models, ...)")
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise UsageError(
            f"{path}: unknown keys {literal(', '.join(sorted(map(str, unknown))))} "
            f"(a merge file has {', '.join(sorted(TOP_KEYS))})"
        )
    name = doc.get("merge_method")
    method = method_named(name) if isinstance(name, str) else None
    if method is None:
        raise UsageError(
            f"{path}: merge_method must be one of {', '.join(METHODS)}, got {literal(repr(name))}"
        )
    here = path.parent

    def model_path(value: Any, where: str) -> Path:
        if not isinstance(value, str) or not value:
            raise UsageError(f"{path}: {where} must be a path")
        p = as_path(value)
        return p if p.is_absolute() or "://" in value else here / value

    base = model_path(doc["base_model"], "base_model") if "base_model" in doc else None
    models = doc.get("models")
    if not isinstance(models, list) or not models:
        raise UsageError(f"{path}: models must be a list of {{model: PATH, parameters: ...}}")
    inputs: list[Path] = []
    per_input: list[dict[str, Setting]] = []
    for i, entry in enumerate(models):
        where = f"models[{i}]"
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict) or set(entry) - MODEL_KEYS or "model" not in entry:
            raise UsageError(f"{path}: {where} must be {{model: PATH, parameters: {{...}}}}")
        p = model_path(entry["model"], f"{where}.model")
        params = _settings(entry.get("parameters") or {}, f"{path}: {where}.parameters")
        if base is not None and p == base and method.base:
            if params:
                raise UsageError(f"{path}: {where} is the base model: it takes no parameters")
            continue  # mergekit lists the base among the models: it is the base
        inputs.append(p)
        per_input.append(params)
    general = _settings(doc.get("parameters") or {}, f"{path}: parameters")
    if method.kind == "slerp" and base is not None:  # mergekit: base_model is t = 0
        inputs = [base, *inputs]
        per_input = [{}, *per_input]
        base = None
    return MergeSpec(method, tuple(inputs), base, tuple(per_input), general, _plain(doc))


def _settings(raw: Any, where: str) -> dict[str, Setting]:
    if not isinstance(raw, dict):
        raise UsageError(f"{where} must be a mapping of parameter: value")
    out = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise UsageError(f"{where}: a parameter name must be text, got {literal(repr(key))}")
        out[key] = _setting(value, f"{where}.{key}")
    return out


def _setting(value: Any, where: str) -> Setting:
    if _scalar(value):
        return Setting.of(value)
    if isinstance(value, list) and value and all(_number(v) for v in value):
        return Setting.of(tuple(float(v) for v in value))
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        rules: list[tuple[str | None, Value | Gradient]] = []
        for j, rule in enumerate(value):
            if set(rule) - {"filter", "value"} or "value" not in rule:
                raise UsageError(f"{where}[{j}] must be {{filter: GLOB, value: V}}")
            pattern = rule.get("filter")
            if pattern is not None and (not isinstance(pattern, str) or not pattern):
                raise UsageError(f"{where}[{j}].filter must be text")
            inner = _setting(rule["value"], f"{where}[{j}].value")
            if len(inner.rules) != 1 or inner.rules[0][0] is not None:
                raise UsageError(f"{where}[{j}].value must be a value or a gradient")
            rules.append((pattern, inner.rules[0][1]))
        return Setting(tuple(rules))
    raise UsageError(
        f"{where} must be a number, true/false, a list of numbers (a gradient) or a list "
        "of {filter, value} rules"
    )


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _scalar(v: Any) -> bool:
    return _number(v) or isinstance(v, bool)


def _plain(doc: Any) -> Any:
    """The document as JSON can hold it (for the history)."""
    if isinstance(doc, dict):
        return {str(k): _plain(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_plain(v) for v in doc]
    if doc is None or isinstance(doc, bool | int | float | str):
        return doc
    return str(doc)


def depths(chosen: list[TensorInfo]) -> dict[str, float]:
    """Each tensor's depth in [0, 1]: its layer's place among the merged layers."""
    layers: dict[str, int] = {}
    for t in chosen:
        layers.setdefault(t.layer or t.name, len(layers))
    n = len(layers)
    return {t.path: (layers[t.layer or t.name] / (n - 1) if n > 1 else 0.0) for t in chosen}
