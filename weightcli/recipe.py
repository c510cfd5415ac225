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

from weightcli.errors import InputError, UsageError
from weightcli.select import Selection
from weightcli.steps import ClipStep, QuantizeStep, ScaleStep, Step

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
    """Parse a recipe file into steps; every mistake is one clear UsageError."""
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise InputError(f"{path}: recipe not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
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
    return [_step(entry, f"{path}: step {i + 1}") for i, entry in enumerate(raw)]


def _step(entry: dict[str, Any], where: str) -> Step:
    command = entry.get("command")
    if command not in STEP_KEYS:
        raise UsageError(f"{where}: command must be one of {', '.join(STEP_KEYS)}, got {command!r}")
    unknown = set(entry) - {"command"} - SELECTION_KEYS - STEP_KEYS[command]
    if unknown:
        raise UsageError(f"{where}: unknown keys for {command}: {', '.join(sorted(unknown))}")
    sel = Selection(
        select=_strings(entry.get("select", []), "select", where),
        exclude=_strings(entry.get("exclude", []), "exclude", where),
        layer_types=_strings(entry.get("layer_types", []), "layer_types", where),
        kinds=_strings(entry.get("kinds", []), "kinds", where),
        include_optimizer=bool(entry.get("include_optimizer", False)),
    )
    args = {k: v for k, v in entry.items() if k in STEP_KEYS[command]}
    try:
        if command == "scale":
            return ScaleStep(
                sel,
                factor=_num(args.get("factor"), "factor", where),
                by_type={k: float(v) for k, v in (args.get("by_type") or {}).items()},
                by_layer={k: float(v) for k, v in (args.get("by_layer") or {}).items()},
            )
        if command == "clip":
            nums = {
                k: _num(args.get(k), k, where)
                for k in ("min", "max", "abs_max", "percentile", "sigma")
            }
            return ClipStep(sel, nonfinite=args.get("nonfinite", "keep"), **nums)
        return QuantizeStep(
            sel,
            bits=int(args.get("bits", 8)),
            scheme=args.get("scheme", "symmetric"),
            granularity=args.get("granularity", "per-channel"),
            axis=args.get("axis"),
            dtype=args.get("dtype"),
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where}: {exc}") from exc


def _num(value: Any, key: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)
