"""Rendering results: tables for people, JSON lines for scripts. No computation here:
every figure comes from a result type (``weightcli.results``), which owns its JSON."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from weightcli import grid
from weightcli.batch import Outcome
from weightcli.distribution import sparkline
from weightcli.grid import Out, Styled, fmt_num
from weightcli.results import (
    ORDER,
    ActivationPlan,
    ByActivationResult,
    CheckStatus,
    DiffResult,
    DiffStatus,
    DumpResult,
    ExportResult,
    FreezeResult,
    InspectResult,
    LoraExtractResult,
    MigrateResult,
    Received,
    ReportResult,
    StripResult,
    TensorReport,
    TransformResult,
    TransplantResult,
    VerifyResult,
    finite_or_none,
)
from weightcli.stores.base import StoreMeta
from weightcli.tensor import TensorInfo

Cell = str | Styled


def console(stderr: bool = False) -> Out:
    """Where reports print: stdout (or stderr), in colour only on a terminal."""
    return grid.out(stderr)


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


LINES = {"keras3": "Keras 3", "tf-keras": "tf_keras"}


def loads_in_line(verdict: dict[str, Any] | None) -> list[str | Styled]:
    """``loads in: Keras 3 no (DepthwiseConv2D groups x13; run weightcli migrate),
    tf_keras yes``: per class when few, else per rule (``--json`` has every one)."""
    if not verdict:
        return []
    bits = []
    for line, v in verdict.items():
        if v["loads"]:
            bits.append(f"{LINES.get(line, line)} yes")
            continue
        needs: dict[str, int] = v["needs"]
        fixable = not any(k.startswith(("written", "not a", "Lambda", "layer ")) for k in needs)
        if len(needs) > 3:  # per rule: "DepthwiseConv2D groups" -> "groups"
            by_rule: dict[str, int] = {}
            for k, n in needs.items():
                rule = k.rsplit(" ", 1)[-1]
                by_rule[rule] = by_rule.get(rule, 0) + n
            needs = by_rule
        shown = [f"{k} x{n}" if n > 1 else k for k, n in needs.items()]
        if len(shown) > 4:
            shown = [*shown[:4], f"{len(shown) - 4} more"]
        hint = "; run weightcli migrate" + ("" if line == "keras3" else " --for tf-keras")
        if any(k.endswith("slash-names") for k in v["needs"]):
            hint += " -o OUT.keras"  # renamed layers: only Keras 3's layout carries them
        bits.append(f"{LINES.get(line, line)} no ({', '.join(shown)}{hint if fixable else ''})")
    return ["  loads in: " + ", ".join(bits)]


def header_lines(path: Path, meta: StoreMeta) -> list[str | Styled]:
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
        if "unreadable" in record:
            lines.append(f"  history: an unreadable entry: {record['unreadable']}")
            continue
        changed = record.get("changed") or []
        lines.append(
            f"  history: {record.get('time') or '?'} weightcli {record.get('version') or '?'} "
            f"{record.get('command') or '?'} ({len(changed)} tensors changed) "
            f"from {record.get('source') or '?'}"
            + (f': "{record["note"]}"' if record.get("note") else "")
        )
    return lines


def _bad(n: int) -> str | Styled:
    return Styled(str(n), "bold red") if n else "0"


def table(
    headers: list[tuple[str, str]],
    rows: list[list[Cell]],
    section_ends: set[int] | None = None,
) -> object:
    """A table of ``rows`` under ``headers`` ((title, justify) pairs), sized for stdout."""
    return grid.table(headers, rows, console().width, section_ends)


def inspect_table(result: InspectResult, layers: bool) -> object:
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

    def repeats(rep: TensorReport) -> bool:  # fewer values than elements: codes, centroids
        return rep.distinct is not None and rep.distinct < rep.info.size

    with_distinct = with_stats and any(repeats(t) for t in result.tensors)
    if with_distinct:  # a quantized or clustered tensor: how many values it holds
        headers.append(("Distinct", "right"))
    with_digests = any(t.blake3 for t in result.tensors)
    if with_digests:
        headers.append(("BLAKE3", "left"))
    with_spark = any(t.histogram is not None for t in result.tensors)
    if with_spark:  # the report's bins, summed in fours
        headers.append(("Distribution", "right"))  # never folded
    rows: list[list[Cell]] = []
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
        if t.quantized and t.kind in ("kernel", "embeddings") and not t.is_float:
            name += f" ({t.quantized} codes)"
        row: list[Cell] = [
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
        if with_distinct:
            row.append(str(rep.distinct) if repeats(rep) else "")
        if with_digests:
            row.append(rep.blake3 or "-")
        if with_spark:
            row.append(Styled(sparkline(rep.histogram.counts), "cyan") if rep.histogram else "")
        rows.append(row)
        if rep.dequantized is not None and with_stats:
            d = rep.dequantized
            deq_row: list[Cell] = ["", "  = dequantized", fmt_shape(t.shape), "float32", "", ""]
            rows.append(
                deq_row
                + [
                    fmt_num(d.min),
                    fmt_num(d.max),
                    fmt_num(d.mean),
                    fmt_num(d.std),
                    fmt_num(d.abs_max),
                    f"{d.zeros_pct:.1f}",
                    _bad(d.nan),
                    _bad(d.inf),
                ]
                + ([""] if with_distinct else [])
                + ([""] if with_digests else [])
                + ([""] if with_spark else [])
            )
    return table(headers, rows, ends)


def _layer_table(result: InspectResult) -> object:
    groups: dict[str, list[TensorReport]] = defaultdict(list)
    for rep in result.tensors:
        key = (
            "(optimizer)"
            if rep.info.optimizer
            else (rep.info.layer or rep.info.name.rsplit("/", 1)[0])
        )
        groups[key].append(rep)
    rows: list[list[Cell]] = []
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


def footer_line(result: InspectResult) -> str:
    t = result.totals()
    parts = ", ".join(
        f"{k}: {v['tensors']} tensors {fmt_bytes(v['bytes'])}" for k, v in t["by_dtype"].items()
    )
    return f"{t['tensors']} tensors, {t['params']:,} parameters, {fmt_bytes(t['bytes'])}" + (
        f" ({parts})" if parts else ""
    )


def print_inspect(result: InspectResult, layers: bool) -> None:
    out = console()
    for line in [*header_lines(result.path, result.meta), *loads_in_line(result.loads_in)]:
        out.print(line)
    if result.tensors:
        out.print(inspect_table(result, layers))
    else:
        out.print("  (no tensors)")
    out.print(footer_line(result))


def print_report(result: ReportResult) -> None:
    """``report``'s terminal lines: the header, the flags and the comparison's verdict
    (the page has the rest)."""
    out = console()
    for line in [
        *header_lines(result.path, result.figures.meta),
        *loads_in_line(result.figures.loads_in),
    ]:
        out.print(line)
    totals = result.figures.totals()
    out.print(
        f"  {totals['tensors']} tensors drawn, {totals['params']:,} parameters; "
        f"{len(result.flags)} flags" + (":" if result.flags else "")
    )
    for f in result.flags:
        out.print(Styled(f"  {f.kind.upper()} ", "bold red").append(f"{f.tensor}: {f.text}"))
    if result.diff is not None:
        out.print(f"  against {result.against}: {result.diff.verdict}")


def print_json(obj: dict[str, Any]) -> None:
    """One JSON object on its own line of stdout (NaN/Inf printed as null)."""
    sys.stdout.write(json.dumps(finite_or_none(obj), allow_nan=False, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# -- transforms -------------------------------------------------------------------------------


def _arrow(a: float | None, b: float | None) -> str:
    return f"{fmt_num(a)} -> {fmt_num(b)}"


def print_transform(result: TransformResult) -> None:
    out = console()
    nonfinite = any(c.before.nonfinite or c.after.nonfinite for c in result.changes)
    headers = [
        ("Tensor", "left"),
        ("Shape", "left"),
        ("Mean before -> after", "right"),
        ("Std before -> after", "right"),
        ("Max |x| before -> after", "right"),
        ("Changed %", "right"),
        ("Max |change|", "right"),
    ]
    if nonfinite:  # statistics are over finite values: say how many are not
        headers.append(("NaN/Inf before -> after", "right"))
    headers.append(("Transform", "left"))
    rows: list[list[Cell]] = []
    for c in result.changes:
        pct = 100.0 * c.changed / c.info.size if c.info.size else 0.0
        name = c.info.name + (
            f" ({c.info.dtype} -> {c.out_dtype})" if c.out_dtype != c.info.dtype else ""
        )
        row: list[Cell] = [
            name,
            fmt_shape(c.info.shape),
            _arrow(c.before.mean, c.after.mean),
            _arrow(c.before.std, c.after.std),
            _arrow(c.before.abs_max, c.after.abs_max),
            f"{pct:.1f}",
            fmt_num(c.max_change),
        ]
        if nonfinite:
            row.append(f"{c.before.nonfinite} -> {c.after.nonfinite}")
        row.append("; ".join(t for t in (f.text() for f in c.figures) if t))
        rows.append(row)
    if rows:
        out.print(table(headers, rows))
    if result.untouched:
        where = f"nothing changed: {result.source} left untouched"
    elif result.output:
        where = f"wrote {result.output}"
    else:
        where = "dry run: nothing written"
    out.print(
        f"{len(result.changes)} of {result.total_tensors} tensors changed ({result.selected} selected), "
        f"{fmt_bytes(result.bytes_written)} written, {result.elapsed:.2f} s; {where}"
    )
    if result.size_before is not None and result.size_after is not None:
        grew = result.size_after > result.size_before
        out.print(
            f"file {fmt_bytes(result.size_before)} -> {fmt_bytes(result.size_after)}"
            + (
                ": larger (the container's own overhead, rewritten: chunk indexes and "
                "metadata, outweighs the data saved in a model this small)"
                if grew
                else ""
            )
        )
    if result.left_out:
        out.print(
            f"left out {len(result.left_out)} normalisation tensors "
            f"({', '.join(result.left_out[:3])}{', ...' if len(result.left_out) > 3 else ''}): "
            "select them with --kind or -s to include them"
        )


# -- diff -------------------------------------------------------------------------------------


def _shape_dtype(t: TensorInfo | None) -> str:
    return f"{fmt_shape(t.shape)} {t.dtype}" if t is not None else "-"


def print_diff(result: DiffResult, all_rows: bool) -> None:
    out = console()
    rows = sorted(result.rows, key=lambda r: (ORDER.index(r.status), r.name))
    shown = [r for r in rows if all_rows or r.status != DiffStatus.IDENTICAL]
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
        sparsity = any(r.sparsity_change for r in shown)
        if sparsity:  # only when some tensor gained or lost exact zeros (pruning)
            headers.append(("Sparsity +/-%", "right"))
        cells: list[list[Cell]] = []
        for r in shown:
            style = "green" if r.status in (DiffStatus.IDENTICAL, DiffStatus.WITHIN) else "bold red"
            change: list[Cell] = []
            if sparsity:
                change = [
                    f"{100 * r.sparsity_change:+.2f}" if r.sparsity_change is not None else "-"
                ]
            cells.append(
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
                    *change,
                ]
            )
        out.print(table(headers, cells))
    out.print(result.verdict)


# -- verify -----------------------------------------------------------------------------------

STATUS_STYLE = {
    CheckStatus.PASS: "green",
    CheckStatus.WARN: "yellow",
    CheckStatus.FAIL: "bold red",
    CheckStatus.SKIP: "dim",
}


def print_verify(result: VerifyResult) -> None:
    out = console()
    out.print(Styled(str(result.path), "bold"))
    rows: list[list[Cell]] = [
        [c.name, Styled(str(c.status), STATUS_STYLE.get(c.status)), c.detail] for c in result.checks
    ]
    out.print(table([("Check", "left"), ("Result", "left"), ("Detail", "left")], rows))
    n_fail = sum(c.status == CheckStatus.FAIL for c in result.checks)
    n_warn = sum(c.status == CheckStatus.WARN for c in result.checks)
    verdict = "FAILED" if n_fail else "OK"
    out.print(f"{verdict}: {len(result.checks)} checks, {n_fail} failed, {n_warn} warnings")


# -- scale --by-activation ------------------------------------------------------------------


def print_activation(plan: ActivationPlan) -> None:
    rows: list[list[Cell]] = []
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


def print_by_activation(result: ByActivationResult) -> None:
    print_transform(result.transform)
    print_activation(result.plan)


def print_transplant(result: TransplantResult) -> None:
    out = console()
    rows: list[list[Cell]] = []
    for r in result.rows:
        style = "green" if r.received == Received.COPIED else "bold red"
        rows.append(
            [
                r.target,
                Styled(r.status, style),
                r.source or "-",
                fmt_num(r.max_change) if r.max_change is not None else "-",
                r.detail,
            ]
        )
    headers = [
        ("Target tensor", "left"),
        ("Status", "left"),
        ("Source tensor", "left"),
        ("Max |new-old|", "right"),
        ("Detail", "left"),
    ]
    out.print(table(headers, rows))
    for w in result.warnings:
        out.print(Styled(f"warning: {w}", "yellow"))
    if result.unused:
        shown = ", ".join(result.unused[:8]) + (", ..." if len(result.unused) > 8 else "")
        out.print(f"{len(result.unused)} source tensors unused: {shown}")
    counts = ", ".join(f"{n} {k}" for k, n in result.counts.items())
    out.print(f"transplant ({result.match_by}): {counts}")
    t = result.transform
    where = f"wrote {t.output}" if t.output else "dry run: nothing written"
    out.print(f"{len(t.changes)} tensors changed, {fmt_bytes(t.bytes_written)} written; {where}")


def print_freeze(result: FreezeResult) -> None:
    rows: list[list[Cell]] = [
        [p, "trainable" if b else "frozen", Styled("trainable" if a else "frozen", "bold")]
        for p, b, a in result.layers
    ]
    out = console()
    out.print(table([("Layer", "left"), ("Before", "left"), ("After", "left")], rows))
    where = f"wrote {result.output}" if result.output else "dry run: nothing written"
    out.print(f"{len(result.layers)} layers set; weights untouched; {where}")


def print_dump(result: DumpResult) -> None:
    total = sum(t.nbytes for t in result.tensors)
    console().print(
        f"{len(result.tensors)} tensors, {fmt_bytes(total)} written to {result.output} "
        f"({result.layout}), {result.elapsed:.2f} s"
    )


def print_migrate(result: MigrateResult) -> None:
    out = console()
    if result.changes:
        rows: list[list[Cell]] = [
            [str(c["layer"]), str(c["key"]), _short(c["old"]), _short(c["new"]), str(c["rule"])]
            for c in result.changes
        ]
        out.print(
            table(
                [
                    ("Layer", "left"),
                    ("Key", "left"),
                    ("Old", "left"),
                    ("New", "left"),
                    ("Rule", "left"),
                ],
                rows,
            )
        )
    where = f"written to {result.output}" if result.output else "dry run: nothing written"
    out.print(
        f"{result.source}: {result.line} -> {result.target}, {len(result.changes)} config "
        f"changes, {result.tensors_carried} tensors carried byte for byte; {where}"
    )
    if result.dropped:
        out.print(
            f"dropped: {', '.join(result.dropped)} (the writer's compile config and "
            f"optimizer state, {len(result.optimizer)} tensors, which the other Keras refuses when "
            "it compiles on load): compile the model again to train it"
        )
    if result.check is not None:
        out.print(f"check: {result.check.status}: {result.check.detail}")


def _short(value: object) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def print_lora_extract(result: LoraExtractResult) -> None:
    out = console()
    rows: list[list[Cell]] = [
        [
            str(k.index),
            k.layer,
            k.tensor,
            str(tuple(k.shape)),
            f"{100 * k.energy:.2f}%",
            fmt_num(k.max_error, 3),
        ]
        for k in result.kernels
    ]
    out.print(
        table(
            [
                ("Index", "right"),
                ("Layer", "left"),
                ("Tensor", "left"),
                ("Shape", "left"),
                ("Energy kept", "right"),
                ("Max error", "right"),
            ],
            rows,
        )
    )
    if result.not_carried:
        out.print(f"not carried (an adapter holds kernels only): {', '.join(result.not_carried)}")
    names = ", ".join(repr(n) for n in result.target_layer_names)
    out.print(
        f"rank {result.rank}, {len(result.kernels)} kernels, {fmt_bytes(result.bytes_written)} "
        f"written to {result.output}; load it with backbone.enable_lora({result.rank}, "
        f"target_layer_names=[{names}]) then load_lora_weights"
    )


def print_strip(result: StripResult) -> None:
    out = console()
    rows: list[list[Cell]] = [[r.wrapper, r.layer, r.kind, r.weight, r.how] for r in result.rows]
    out.print(
        table(
            [
                ("Wrapper", "left"),
                ("Layer", "left"),
                ("Kind", "left"),
                ("Weight", "left"),
                ("Value", "left"),
            ],
            rows,
        )
    )
    if result.removed_layers:
        out.print(f"removed layers: {', '.join(result.removed_layers)}")
    out.print(
        f"dropped {len(result.dropped)} wrapper variables"
        + (
            " and the optimizer state (it trained the wrapped model)"
            if result.optimizer_dropped
            else ""
        )
    )
    out.print(
        f"wrote {result.output} ({fmt_bytes(result.bytes_written)})"
        if result.output
        else "dry run: nothing written"
    )


def print_export(result: ExportResult) -> None:
    rows: list[list[Cell]] = [
        [
            r.name,
            fmt_shape(r.shape),
            ", ".join(f"{n} {fmt_shape(s)}" for n, s in zip(r.written, r.shapes, strict=True)),
            r.rule,
        ]
        for r in result.rows
    ]
    out = console()
    out.print(
        table(
            [("Tensor", "left"), ("Shape", "left"), ("Written as", "left"), ("Rule", "left")], rows
        )
    )
    out.print(
        f"{len(result.rows)} tensors, {fmt_bytes(result.bytes_written)} written to "
        f"{result.output} ({result.to}, {result.layout} layout), {result.elapsed:.2f} s"
    )
    if result.check is not None:
        out.print(f"{result.check.status}: {result.check.name}: {result.check.detail}")


# -- batch ------------------------------------------------------------------------------------

OUTCOME = {0: "ok", 1: "check failed", 2: "error", 3: "internal error"}


def print_summary(outcomes: list[Outcome]) -> None:
    """The table that ends a batch run: model, outcome, time, error; then the counts."""
    rows: list[list[Cell]] = []
    for o in outcomes:
        style = {0: "green", 1: "yellow", 2: "bold red", 3: "bold red"}[o.code]
        rows.append([o.label, Styled(OUTCOME[o.code], style), f"{o.elapsed:.2f} s", o.error or ""])
    out = console()
    out.print(
        table(
            [("Model", "left"), ("Outcome", "left"), ("Time", "right"), ("Error", "left")],
            rows,
        )
    )
    shown = (0, 1, 2, 3) if any(o.code == 3 for o in outcomes) else (0, 1, 2)
    counts = ", ".join(f"{sum(o.code == c for o in outcomes)} {OUTCOME[c]}" for c in shown)
    out.print(f"{len(outcomes)} models: {counts}")
