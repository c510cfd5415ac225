"""Recipes for ``weightcli apply``: several steps, one pass, one write.

A recipe is a TOML file with one ``[[step]]`` table per step, applied in order::

    [[step]]
    command = "clip"          # scale | clip | quantize
    nonfinite = "zero"
    abs_max = 3.0

    [[step]]
    command = "scale"
    factor = 0.5
    layer_types = ["Dense"]   # selection keys: select, exclude, layer_types, kinds,
                              # include_optimizer (same meaning as the CLI options)

Each step takes the options of its command, with underscores: ``factor``,
``by_type`` / ``by_layer`` (tables of NAME = factor); ``min``, ``max``, ``abs_max``,
``percentile``, ``sigma``, ``nonfinite``; ``bits``, ``scheme``, ``granularity``,
``axis``, ``dtype``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from weightcli.errors import InputError, ParameterError, UsageError
from weightcli.select import Selection
from weightcli.steps import ClipStep, QuantizeStep, ScaleStep, Step
from weightcli.stores import capped

SELECTION_KEYS = {"select", "exclude", "layer_types", "kinds", "include_optimizer"}
STEP_KEYS: dict[str, set[str]] = {
    "scale": {"factor", "by_type", "by_layer"},
    "clip": {"min", "max", "abs_max", "percentile", "sigma", "nonfinite"},
    "quantize": {"bits", "scheme", "granularity", "axis", "dtype"},
}


def _strings(value: Any, key: str, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise UsageError(f"{where}: {key} must be a string or a list of strings")


def load(path: Path) -> list[Step]:
    """Parse a recipe file into steps; every mistake is one clear UsageError naming the
    step and the key (values are type-checked strictly: ``bits = 8.5`` is refused)."""
    try:
        text = capped.read_bytes(path, capped.RECIPE_BYTES, "recipe").decode()
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: cannot read recipe: {exc}") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from exc
    extra = set(doc) - {"step"}
    if extra:
        raise UsageError(
            f"{path}: unknown top-level keys {sorted(extra)} (expected [[step]] tables)"
        )
    raw = doc.get("step")
    if not isinstance(raw, list) or not raw:
        raise UsageError(f"{path}: no [[step]] tables")
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise UsageError(
                f"{path}: step {i + 1} is {type(entry).__name__}, not a table: write [[step]] tables"
            )
    return [_step(entry, f"{path}: step {i + 1}") for i, entry in enumerate(raw)]


def _step(entry: dict[str, Any], where: str) -> Step:
    command = entry.get("command")
    if command not in STEP_KEYS:
        raise UsageError(f"{where}: command must be one of {', '.join(STEP_KEYS)}, got {command!r}")
    unknown = set(entry) - {"command"} - SELECTION_KEYS - STEP_KEYS[command]
    if unknown:
        raise UsageError(f"{where}: unknown keys for {command}: {', '.join(sorted(unknown))}")
    include_optimizer = entry.get("include_optimizer", False)
    if not isinstance(include_optimizer, bool):
        raise UsageError(
            f"{where}: include_optimizer must be true or false, got {include_optimizer!r}"
        )
    sel = Selection(
        select=_strings(entry.get("select", []), "select", where),
        exclude=_strings(entry.get("exclude", []), "exclude", where),
        layer_types=_strings(entry.get("layer_types", []), "layer_types", where),
        kinds=_strings(entry.get("kinds", []), "kinds", where),
        include_optimizer=include_optimizer,
    )
    args = {k: v for k, v in entry.items() if k in STEP_KEYS[command]}
    try:
        if command == "scale":
            return ScaleStep(
                sel,
                factor=_num(args.get("factor"), "factor", where),
                by_type=_table(args.get("by_type"), "by_type", where),
                by_layer=_table(args.get("by_layer"), "by_layer", where),
            )
        if command == "clip":
            nums = {
                k: _num(args.get(k), k, where)
                for k in ("min", "max", "abs_max", "percentile", "sigma")
            }
            return ClipStep(
                sel, nonfinite=_text(args, "nonfinite", "keep", where) or "keep", **nums
            )
        axis = args.get("axis")
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
            raise UsageError(f"{where}: axis must be a whole number, got {axis!r}")
        dtype = args.get("dtype")
        if dtype is not None and not isinstance(dtype, str):
            raise UsageError(f"{where}: dtype must be a string, got {dtype!r}")
        return QuantizeStep(
            sel,
            bits=args.get("bits"),
            scheme=_text(args, "scheme", None, where),
            granularity=_text(args, "granularity", None, where),
            axis=axis,
            dtype=dtype,
        )
    except ParameterError as exc:  # recipe keys are the parameters' own names
        raise UsageError(f"{where}: {exc}") from exc


def _text(args: dict[str, Any], key: str, default: str | None, where: str) -> str | None:
    value = args.get(key, default)
    if value is not None and not isinstance(value, str):
        raise UsageError(f"{where}: {key} must be a string, got {value!r}")
    return value


def _table(value: Any, key: str, where: str) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{where}: {key} must be a table of NAME = factor")
    out: dict[str, float] = {}
    for k, v in value.items():
        num = _num(v, f"{key}.{k}", where)
        assert num is not None
        out[k] = num
    return out


def _num(value: Any, key: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)
