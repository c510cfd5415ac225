"""Rendering results: rich tables for people, JSON for scripts. No computation here."""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from typing import Any

from weightcli import grid
from weightcli.grid import Out, Styled
from weightcli.inspection import InspectResult, TensorReport
from weightcli.stores.base import StoreMeta


def console(stderr: bool = False) -> Out:
    """Where reports print: stdout (or stderr), in colour only on a terminal."""
    return grid.out(stderr)


def fmt_num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def header_lines(path: Any, meta: StoreMeta) -> list[str | Styled]:
    lines: list[str | Styled] = [Styled(str(path), "bold").append(f"  {meta.format_label}")]
    bits = []
    if meta.writer:
        bits.append(f"written by {meta.writer}")
    if meta.model_class:
        bits.append(
            f"model {meta.model_class}" + (f" '{meta.model_name}'" if meta.model_name else "")
        )
    for key, value in meta.extra.items():
        bits.append(f"{key} {value}")
    if bits:
        lines.append("  " + ", ".join(bits))
    for record in meta.history:
        changed = record.get("changed", [])
        lines.append(
            f"  history: {record.get('time', '?')} weightcli {record.get('version', '?')} "
            f"{record.get('command', '?')} ({len(changed)} tensors changed) "
            f"from {record.get('source', '?')}"
        )
    return lines


def _bad(n: int) -> str | Styled:
    return Styled(str(n), "bold red") if n else "0"


def table(
    headers: list[tuple[str, str]],
    rows: list[list[Any]],
    section_ends: set[int] | None = None,
) -> Any:
    """A table of ``rows`` under ``headers`` ((title, justify) pairs), sized for stdout."""
    return grid.table(headers, rows, console().width, section_ends)


def inspect_table(result: InspectResult, layers: bool) -> Any:
    if layers:
        return _layer_table(result)
    with_stats = any(t.stats for t in result.tensors)
    headers = [
        ("Layer", "left"),
        ("Tensor", "left"),
        ("Shape", "left"),
        ("DType", "left"),
        ("Params", "right"),
        ("Bytes", "right"),
    ]
    if with_stats:
        headers += [
            (c, "right") for c in ("Min", "Max", "Mean", "Std", "Max |x|", "Zeros %", "NaN", "Inf")
        ]
    rows: list[list[Any]] = []
    ends: set[int] = set()
    last: object = object()
    for rep in result.tensors:
        t = rep.info
        layer = "(optimizer)" if t.optimizer else (t.layer or "")
        if layer != last and rows:
            ends.add(len(rows) - 1)
        label = Styled()
        if layer != last:
            label = Styled(layer, "bold cyan")
            if t.layer_class:
                label.append(f" {t.layer_class}", "dim")
            last = layer
        name = t.name + (f" (x{len(t.copies) + 1} copies)" if t.copies else "")
        row: list[Any] = [
            label,
            name,
            fmt_shape(t.shape),
            t.dtype,
            f"{t.size:,}",
            fmt_bytes(t.nbytes),
        ]
        if with_stats:
            st = rep.stats
            if st is None:
                row += ["-"] * 8
            else:
                row += [
                    fmt_num(st.min),
                    fmt_num(st.max),
                    fmt_num(st.mean),
                    fmt_num(st.std),
                    fmt_num(st.abs_max),
                    f"{st.zeros_pct:.1f}",
                    _bad(st.nan),
                    _bad(st.inf),
                ]
        rows.append(row)
    return table(headers, rows, ends)


def _layer_table(result: InspectResult) -> Any:
    groups: dict[str, list[TensorReport]] = defaultdict(list)
    for rep in result.tensors:
        key = (
            "(optimizer)"
            if rep.info.optimizer
            else (rep.info.layer or rep.info.name.rsplit("/", 1)[0])
        )
        groups[key].append(rep)
    rows = []
    for layer, reps in groups.items():
        absmax = [r.stats.abs_max for r in reps if r.stats and r.stats.abs_max is not None]
        rows.append(
            [
                layer,
                reps[0].info.layer_class or "",
                str(len(reps)),
                f"{sum(r.info.size for r in reps):,}",
                fmt_bytes(sum(r.info.nbytes for r in reps)),
                fmt_num(max(absmax)) if absmax else "-",
                _bad(sum(r.stats.nan for r in reps if r.stats)),
                _bad(sum(r.stats.inf for r in reps if r.stats)),
            ]
        )
    headers = [
        ("Layer", "left"),
        ("Class", "left"),
        ("Tensors", "right"),
        ("Params", "right"),
        ("Bytes", "right"),
        ("Max |x|", "right"),
        ("NaN", "right"),
        ("Inf", "right"),
    ]
    return table(headers, rows)


def totals(reports: list[TensorReport]) -> dict[str, Any]:
    by_dtype: dict[str, dict[str, int]] = defaultdict(
        lambda: {"tensors": 0, "params": 0, "bytes": 0}
    )
    for rep in reports:
        d = by_dtype[rep.info.dtype]
        d["tensors"] += 1
        d["params"] += rep.info.size
        d["bytes"] += rep.info.nbytes
    return {
        "tensors": len(reports),
        "params": sum(r.info.size for r in reports),
        "bytes": sum(r.info.nbytes for r in reports),
        "by_dtype": dict(by_dtype),
    }


def footer_line(reports: list[TensorReport]) -> str:
    t = totals(reports)
    parts = ", ".join(
        f"{k}: {v['tensors']} tensors {fmt_bytes(v['bytes'])}" for k, v in t["by_dtype"].items()
    )
    return f"{t['tensors']} tensors, {t['params']:,} parameters, {fmt_bytes(t['bytes'])}" + (
        f" ({parts})" if parts else ""
    )


def print_inspect(result: InspectResult, layers: bool) -> None:
    out = console()
    for line in header_lines(result.path, result.store_meta):  # type: ignore[arg-type]
        out.print(line)
    if result.tensors:
        out.print(inspect_table(result, layers))
    else:
        out.print("  (no tensors)")
    out.print(footer_line(result.tensors))


def inspect_json(result: InspectResult) -> dict[str, Any]:
    meta: StoreMeta = result.store_meta  # type: ignore[assignment]
    tensors = []
    for rep in result.tensors:
        t = rep.info
        item: dict[str, Any] = {
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
        if rep.stats is not None:
            item["stats"] = rep.stats.to_json()
        tensors.append(item)
    return {
        "path": str(result.path),
        "format": meta.format,
        "writer": meta.writer,
        "model_class": meta.model_class,
        "model_name": meta.model_name,
        "history": meta.history,
        "tensors": tensors,
        "totals": totals(result.tensors),
    }


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, allow_nan=False, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# -- transforms -------------------------------------------------------------------------------


def finite_or_none(x: Any) -> Any:
    """JSON has no Infinity/NaN: such values become null (documented in the README)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite_or_none(v) for v in x]
    return x


def _figure_text(fig: dict[str, Any]) -> str:
    if "factor" in fig:
        return f"x{fmt_num(fig['factor'])}"
    if "clipped" in fig and fig["min"] is None and fig["max"] is None:
        return f"repaired {fig['repaired']} NaN/Inf"
    if "clipped" in fig:
        bounds = (
            f"[{fmt_num(fig['min'])}, {fmt_num(fig['max'])}]"
            if fig["min"] is not None or fig["max"] is not None
            else ""
        )
        text = f"clipped {fig['clipped_pct']:.2f}% {bounds}".strip()
        if fig["repaired"]:
            text += f", repaired {fig['repaired']}"
        return text
    if "dtype" in fig:
        return f"-> {fig['dtype']}, SQNR {fmt_num(fig['sqnr_db'], 3)} dB, max err {fmt_num(fig['max_abs_error'])}"
    if "bits" in fig:
        scale = (
            fmt_num(fig["scale_min"])
            if fig["scale_min"] == fig["scale_max"]
            else f"{fmt_num(fig['scale_min'])}..{fmt_num(fig['scale_max'])}"
        )
        return (
            f"{fig['bits']}-bit, scale {scale}, SQNR {fmt_num(fig['sqnr_db'], 3)} dB, "
            f"max err {fmt_num(fig['max_abs_error'])}"
        )
    return ""


def _arrow(a: float | None, b: float | None) -> str:
    return f"{fmt_num(a)} -> {fmt_num(b)}"


def print_transform(result: Any) -> None:
    out = console()
    headers = [
        ("Tensor", "left"),
        ("Shape", "left"),
        ("Mean before -> after", "right"),
        ("Std before -> after", "right"),
        ("Max |x| before -> after", "right"),
        ("Changed %", "right"),
        ("Max |change|", "right"),
        ("Transform", "left"),
    ]
    rows = []
    for c in result.changes:
        pct = 100.0 * c.changed / c.info.size if c.info.size else 0.0
        name = c.info.name + (
            f" ({c.info.dtype} -> {c.out_dtype})" if c.out_dtype != c.info.dtype else ""
        )
        rows.append(
            [
                name,
                fmt_shape(c.info.shape),
                _arrow(c.before.mean, c.after.mean),
                _arrow(c.before.std, c.after.std),
                _arrow(c.before.abs_max, c.after.abs_max),
                f"{pct:.1f}",
                fmt_num(c.max_change),
                "; ".join(t for t in (_figure_text(f) for f in c.figures) if t),
            ]
        )
    if rows:
        out.print(table(headers, rows))
    where = f"wrote {result.output}" if result.output else "dry run: nothing written"
    out.print(
        f"{len(result.changes)} of {result.total_tensors} tensors changed ({result.selected} selected), "
        f"{fmt_bytes(result.bytes_written)} written, {result.elapsed:.2f} s; {where}"
    )


def transform_json(result: Any) -> dict[str, Any]:
    tensors = []
    for c in result.changes:
        tensors.append(
            {
                "name": c.info.name,
                "shape": list(c.info.shape),
                "dtype": c.info.dtype,
                "out_dtype": c.out_dtype,
                "before": {
                    "mean": c.before.mean,
                    "std": c.before.std,
                    "abs_max": c.before.abs_max,
                    "nan": c.before.nan,
                    "inf": c.before.inf,
                },
                "after": {
                    "mean": c.after.mean,
                    "std": c.after.std,
                    "abs_max": c.after.abs_max,
                    "nan": c.after.nan,
                    "inf": c.after.inf,
                },
                "changed": c.changed,
                "changed_pct": 100.0 * c.changed / c.info.size if c.info.size else 0.0,
                "max_change": c.max_change,
                "figures": c.figures,
            }
        )
    return finite_or_none(
        {
            "source": str(result.source),
            "output": str(result.output) if result.output else None,
            "dry_run": result.output is None,
            "changed": len(result.changes),
            "selected": result.selected,
            "total": result.total_tensors,
            "bytes_written": result.bytes_written,
            "elapsed_s": result.elapsed,
            "tensors": tensors,
            "history": result.record,
        }
    )


# -- diff -------------------------------------------------------------------------------------


def _shape_dtype(t: Any) -> str:
    return f"{fmt_shape(t.shape)} {t.dtype}" if t is not None else "-"


def print_diff(result: Any, all_rows: bool) -> None:
    from weightcli.compare import IDENTICAL, ORDER

    out = console()
    rows = sorted(result.rows, key=lambda r: (ORDER.index(r.status), r.name))
    shown = [r for r in rows if all_rows or r.status != IDENTICAL]
    if shown:
        headers = [
            ("Tensor", "left"),
            ("Status", "left"),
            ("A", "left"),
            ("B", "left"),
            ("Max |a-b|", "right"),
            ("Mean |a-b|", "right"),
            ("Rel L2", "right"),
            ("Cosine", "right"),
            ("Beyond tol %", "right"),
        ]
        rows = []
        for r in shown:
            style = "green" if r.status in ("identical", "within tolerance") else "bold red"
            rows.append(
                [
                    r.name,
                    Styled(r.status, style),
                    _shape_dtype(r.a),
                    _shape_dtype(r.b),
                    fmt_num(r.max_abs),
                    fmt_num(r.mean_abs),
                    fmt_num(r.rel_l2),
                    fmt_num(r.cosine, 7),
                    fmt_num(r.beyond_pct) if r.beyond_pct is not None else "-",
                ]
            )
        out.print(table(headers, rows))
    out.print(diff_verdict(result))


def diff_verdict(result: Any) -> str:
    counts = result.counts()
    total = len(result.rows)
    tol = (
        "exact"
        if result.atol == 0 and result.rtol == 0
        else f"atol {result.atol:g}, rtol {result.rtol:g}"
    )
    what = "structure" if result.structure else tol
    detail = ", ".join(f"{n} {s}" for s, n in counts.items())
    if result.equal:
        return f"EQUAL: {total} tensors ({detail}; {what})"
    bad = sum(n for s, n in counts.items() if s not in ("identical", "within tolerance"))
    return f"DIFFERENT: {bad} of {total} tensors differ ({detail}; {what})"


def diff_json(result: Any) -> dict[str, Any]:
    tensors = []
    for r in result.rows:
        tensors.append(
            {
                "name": r.name,
                "status": r.status,
                "a": {"path": r.a.path, "shape": list(r.a.shape), "dtype": r.a.dtype}
                if r.a
                else None,
                "b": {"path": r.b.path, "shape": list(r.b.shape), "dtype": r.b.dtype}
                if r.b
                else None,
                "max_abs": r.max_abs,
                "mean_abs": r.mean_abs,
                "rel_l2": r.rel_l2,
                "cosine": r.cosine,
                "beyond": r.beyond,
                "beyond_pct": r.beyond_pct,
            }
        )
    return finite_or_none(
        {
            "a": result.a,
            "b": result.b,
            "equal": result.equal,
            "verdict": diff_verdict(result),
            "atol": result.atol,
            "rtol": result.rtol,
            "nan_equal": result.nan_equal,
            "structure": result.structure,
            "counts": result.counts(),
            "tensors": tensors,
        }
    )


# -- verify -----------------------------------------------------------------------------------

STATUS_STYLE = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red", "SKIP": "dim"}


def print_verify(result: Any) -> None:
    out = console()
    out.print(Styled(str(result.path), "bold"))
    rows = [[c.name, Styled(c.status, STATUS_STYLE.get(c.status)), c.detail] for c in result.checks]
    out.print(table([("Check", "left"), ("Result", "left"), ("Detail", "left")], rows))
    n_fail = sum(c.status == "FAIL" for c in result.checks)
    n_warn = sum(c.status == "WARN" for c in result.checks)
    verdict = "FAILED" if n_fail else "OK"
    out.print(f"{verdict}: {len(result.checks)} checks, {n_fail} failed, {n_warn} warnings")


def verify_json(result: Any) -> dict[str, Any]:
    return finite_or_none(
        {
            "path": result.path,
            "ok": not result.failed,
            "checks": [
                {
                    "name": c.name,
                    "status": c.status,
                    "detail": c.detail,
                    **({"data": c.data} if c.data else {}),
                }
                for c in result.checks
            ],
        }
    )


# -- scale --by-activation ------------------------------------------------------------------


def print_activation(plan: Any) -> None:
    rows = []
    for lp in plan.layers:
        rows.append(
            [
                lp.layer,
                lp.layer_class,
                lp.activation or "linear",
                fmt_num(lp.stat_before),
                fmt_num(lp.factor) if lp.scaled else "-",
                fmt_num(lp.stat_after),
                lp.note,
            ]
        )
    headers = [
        ("Layer", "left"),
        ("Class", "left"),
        ("Activation", "left"),
        (f"{plan.stat} before", "right"),
        ("Factor", "right"),
        (f"{plan.stat} after", "right"),
        ("Note", "left"),
    ]
    out = console()
    out.print(table(headers, rows))
    scaled = sum(lp.scaled for lp in plan.layers)
    out.print(
        f"target {plan.stat} {fmt_num(plan.target)}: {scaled} of {len(plan.layers)} layers scaled"
    )


def activation_json(plan: Any) -> list[dict[str, Any]]:
    return [
        {
            "layer": lp.layer,
            "layer_class": lp.layer_class,
            "activation": lp.activation,
            "stat_before": lp.stat_before,
            "factor": lp.factor if lp.scaled else None,
            "stat_after": lp.stat_after,
            "scaled": lp.scaled,
            "note": lp.note or None,
        }
        for lp in plan.layers
    ]
