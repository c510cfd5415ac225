"""One self-contained HTML page of a ``ReportResult``: inline CSS and SVG, a little inline
JavaScript for sorting and filtering (the page reads the same without it), no request
to anywhere (a Content-Security-Policy that allows nothing but the page itself says so
to the browser).

Every string from the checkpoint (tensor and layer names, history notes, configs) is
escaped: a file's names are data, never markup."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

import numpy as np

from weightcli.distribution import (
    EXACT_SIDE_MAX,
    EXPLODING,
    GRAM_FLOPS,
    OUTLIER_Z,
    POWER_ITERATIONS,
    WHOLE_ELEMS,
    Histogram,
)
from weightcli.grid import fmt_num
from weightcli.report import fmt_bytes, fmt_shape, loads_in_line
from weightcli.results import EQUAL_STATUSES, DiffResult, ReportResult, TensorReport
from weightcli.version import __version__

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'"
)

STYLE = """
:root{--fg:#1b1f24;--mute:#57606a;--line:#d0d7de;--bg:#fff;--bar:#2f6fb0;--log:#b35900;
--before:#6e7781;--warn:#9a3412;--ok:#116329}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);
background:var(--bg);margin:0 auto;padding:16px;max-width:1400px}
h1{font-size:20px;margin:0 0 4px;word-break:break-all}h2{font-size:17px;margin:24px 0 8px;overflow-wrap:anywhere}
.mute{color:var(--mute)}dl.meta{display:grid;grid-template-columns:max-content 1fr;
gap:2px 12px;margin:8px 0}dl.meta dt{color:var(--mute)}dl.meta dd{margin:0;word-break:break-word}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid var(--line);padding:3px 6px;text-align:right;vertical-align:middle}
th{position:sticky;top:0;background:#f6f8fa;cursor:pointer;white-space:nowrap}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td{white-space:nowrap}td.l,th.l{text-align:left}td.name,td.lay{white-space:normal}
table{font-size:13px}td.name{word-break:break-all;min-width:12em}
.scroll{overflow-x:auto;max-width:100%}
ul.flags{list-style:none;padding:0;margin:0}ul.flags li{margin:4px 0;padding:6px 8px;
border-left:4px solid var(--warn);background:#fff7ed}
.tag{display:inline-block;font-weight:600;min-width:6.5em;text-transform:uppercase;
font-size:12px;letter-spacing:.03em}
.good{border-left:4px solid var(--ok);padding:6px 8px;background:#f0fdf4}
ol.history{padding-left:20px}ol.history li{margin:2px 0}
svg.hist{display:block;width:160px;height:44px}svg.hist .bars{fill:var(--bar)}
svg.hist .log{fill:none;stroke:var(--log);stroke-width:1.5}
svg.hist .before{fill:none;stroke:var(--before);stroke-width:1.2}
svg.change{display:block;width:100%;height:120px}svg.change rect{fill:var(--bar)}
.legend{font-size:12px;color:var(--mute)}
.legend i{display:inline-block;width:18px;height:0;vertical-align:middle;margin:0 4px 0 10px}
.overlays{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:12px}
.overlays figure{margin:0}.overlays figcaption{font-size:12px;word-break:break-all}
input[type=search]{font:inherit;padding:4px 8px;width:min(100%,28em);margin:4px 0 8px}
@media (max-width:600px){body{padding:8px;font-size:13px}dl.meta{grid-template-columns:1fr}
dl.meta dt{margin-top:4px}}
"""

SCRIPT = """
(function(){
function key(td){var v=td.getAttribute('data-v');return v===null?td.textContent:v}
document.querySelectorAll('table.sortable').forEach(function(tb){
 tb.querySelectorAll('th').forEach(function(th,i){
  th.setAttribute('tabindex','0');
  function sort(){
   var asc=th.getAttribute('aria-sort')!=='ascending';
   tb.querySelectorAll('th').forEach(function(o){o.removeAttribute('aria-sort')});
   th.setAttribute('aria-sort',asc?'ascending':'descending');
   var body=tb.tBodies[0],rows=Array.prototype.slice.call(body.rows);
   rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);
    var nx=parseFloat(x),ny=parseFloat(y),c;
    if(!isNaN(nx)&&!isNaN(ny)&&th.hasAttribute('data-num'))c=nx-ny;else c=String(x).localeCompare(String(y));
    return asc?c:-c});
   rows.forEach(function(r){body.appendChild(r)});
  }
  th.addEventListener('click',sort);
  th.addEventListener('keydown',function(e){if(e.key==='Enter'||e.key===' '){e.preventDefault();sort()}});
 });
});
var q=document.getElementById('filter');
if(q){q.addEventListener('input',function(){var s=q.value.toLowerCase(),shown=0;
 document.querySelectorAll('#tensors tbody tr').forEach(function(r){
  var hit=r.getAttribute('data-name').toLowerCase().indexOf(s)>=0;r.hidden=!hit;if(hit)shown++});
 document.getElementById('shown').textContent=shown;});}
})();
"""

# The viewBox of a histogram: two units a bin, 40 high.
H = 40.0


def _e(x: object) -> str:
    return escape(str(x), quote=True)


def _num(x: float | None) -> str:
    return fmt_num(x)


def _bars(counts: np.ndarray, height: float = H) -> str:
    """One path of bars, linear heights (the tallest fills the box)."""
    top = int(counts.max()) if counts.size else 0
    if top == 0:
        return ""
    parts = []
    for i, c in enumerate(counts.tolist()):
        if c:
            h = max(0.6, round(c * height / top, 1))
            parts.append(f"M{2 * i} {height:g}v-{h:g}h2v{h:g}z")
    return "".join(parts)


def _log_caps(counts: np.ndarray, height: float = H) -> str:
    """log10(1 + count) of each non-empty bin as a short level line across the bin
    (the tallest fills the box): a few outlying values still show."""
    logs = np.log10(1 + counts.astype(np.float64))
    top = float(logs.max()) if logs.size else 0.0
    if top == 0:
        return ""
    return "".join(
        f"M{2 * i} {round(height - v * height / top, 1):g}h2"
        for i, v in enumerate(logs.tolist())
        if v > 0
    )


def _hist_svg(hist: Histogram, name: str, before: Histogram | None = None) -> str:
    total = int(hist.counts.sum())
    label = (
        f"Histogram of {name}: {total:,} values in {hist.bins} bins from "
        f"{fmt_num(hist.lo)} to {fmt_num(hist.hi)}"
    )
    if before is not None:
        label += "; outline: the reference's values in the same bins"
    w = 2 * hist.bins
    body = [f'<path class="bars" d="{_bars(hist.counts)}"/>']
    if before is not None:
        body.append(f'<path class="before" d="{_bars(before.counts)}"/>')
    else:
        body.append(f'<path class="log" d="{_log_caps(hist.counts)}"/>')
    return (
        f'<svg class="hist" viewBox="0 0 {w} {H:g}" preserveAspectRatio="none" role="img" '
        f'aria-label="{_e(label)}"><title>{_e(label)}</title>{"".join(body)}</svg>'
    )


def _legend(overlay: bool = False) -> str:
    if overlay:
        return (
            '<p class="legend">Filled bars: this file\'s values.'
            '<i style="border-top:2px solid var(--before)"></i>outline: the reference\'s, '
            "in the same bins.</p>"
        )
    return (
        '<p class="legend"><i style="border-top:6px solid var(--bar)"></i>bars: count per bin '
        '(linear)<i style="border-top:2px solid var(--log)"></i>level marks above each '
        "non-empty bin: log10(1 + count), so that a few outlying values show. 64 equal bins over each tensor's own finite "
        "range (min and max are in the table).</p>"
    )


def _meta_rows(result: ReportResult) -> list[tuple[str, str]]:
    meta = result.figures.meta
    totals = result.figures.totals()
    rows = [("format", meta.format_label)]
    if meta.writer:
        rows.append(("written by", meta.writer))
    if meta.model_class:
        rows.append(
            ("model", meta.model_class + (f" '{meta.model_name}'" if meta.model_name else ""))
        )
    if result.size is not None:
        rows.append(("size on disk", f"{fmt_bytes(result.size)} ({result.size:,} bytes)"))
    rows.append(
        (
            "tensors",
            f"{totals['tensors']:,} shown, {totals['params']:,} parameters, "
            f"{fmt_bytes(totals['bytes'])}",
        )
    )
    by_dtype = totals["by_dtype"]
    rows.append(
        (
            "parameters by dtype",
            "; ".join(
                f"{dt}: {d['params']:,} in {d['tensors']} tensors ({fmt_bytes(d['bytes'])})"
                for dt, d in sorted(by_dtype.items(), key=lambda kv: -kv[1]["params"])
            )
            or "-",
        )
    )
    for k, v in meta.extra.items():
        rows.append((str(k), str(v)))
    loads = loads_in_line(result.figures.loads_in)
    if loads:
        rows.append(("loads in", str(loads[0]).split("loads in: ", 1)[-1]))
    return rows


def _history(history: Sequence[dict[str, Any]]) -> str:
    if not history:
        return (
            '<p class="mute">No weightcli history: this file has not been changed by weightcli.</p>'
        )
    items = []
    for record in history:
        if "unreadable" in record:
            items.append(f"<li>an unreadable entry: {_e(record['unreadable'])}</li>")
            continue
        changed = record.get("changed") or []
        note = f" &mdash; &ldquo;{_e(record['note'])}&rdquo;" if record.get("note") else ""
        items.append(
            f"<li><time>{_e(record.get('time') or '?')}</time> "
            f"<code>{_e(record.get('command') or '?')}</code> "
            f"(weightcli {_e(record.get('version') or '?')}, {len(changed)} tensors changed, "
            f"from {_e(record.get('source') or '?')}){note}</li>"
        )
    return '<ol class="history">' + "".join(items) + "</ol>"


def _flags(result: ReportResult) -> str:
    if not result.flags:
        return (
            '<p class="good"><span class="tag">No flags</span> no NaN or Inf, no all-zero or '
            "exploding weight matrix, no kernel far from its peers.</p>"
        )
    shown = {
        "nan": "NaN",
        "inf": "Inf",
        "dead": "Dead",
        "exploding": "Exploding",
        "outlier": "Outlier",
    }
    items = [
        f'<li data-flag="{_e(f.kind)}"><span class="tag">{_e(shown.get(f.kind, f.kind))}</span> '
        f"<code>{_e(f.tensor)}</code>: {_e(f.text)}</li>"
        for f in result.flags
    ]
    return '<ul class="flags">' + "".join(items) + "</ul>"


def _cell(text: str, value: float | int | None = None, cls: str = "") -> str:
    v = "" if value is None or not math.isfinite(value) else f' data-v="{value!r}"'
    c = f' class="{cls}"' if cls else ""
    return f"<td{c}{v}>{text}</td>"


TENSOR_HEADERS = [
    ("Layer", "l", False),
    ("Tensor", "l", False),
    ("Histogram", "l", False),
    ("Shape", "l", False),
    ("DType", "l", False),
    ("Params", "", True),
    ("Min", "", True),
    ("Max", "", True),
    ("Mean", "", True),
    ("Std", "", True),
    ("Zeros %", "", True),
    ("NaN / Inf", "", True),
    ("Distinct", "", True),
    ("Spectral norm", "", True),
    ("Stable rank", "", True),
    ("Effective rank", "", True),
]


def _tensor_row(rep: TensorReport) -> str:
    t, st, sp = rep.info, rep.stats, rep.spectral
    layer = "(optimizer)" if t.optimizer else (t.layer or "")
    layer_cell = _e(layer) + (
        f' <span class="mute">{_e(t.layer_class)}</span>' if t.layer_class else ""
    )
    hist = _hist_svg(rep.histogram, t.name) if rep.histogram is not None else ""
    cells = [
        _cell(layer_cell, cls="l lay"),
        f'<td class="l name"><code>{_e(t.name)}</code></td>',
        f'<td class="l">{hist}</td>',
        _cell(_e(fmt_shape(t.shape)), t.size, "l"),
        _cell(_e(t.dtype), cls="l"),
        _cell(f"{t.size:,}", t.size),
    ]
    if st is None:
        cells += [_cell("-")] * 6
    else:
        cells += [
            _cell(_num(st.min), st.min),
            _cell(_num(st.max), st.max),
            _cell(_num(st.mean), st.mean),
            _cell(_num(st.std), st.std),
            _cell(f"{st.zeros_pct:.1f}", st.zeros_pct),
            _cell(f"{st.nan:,} / {st.inf:,}", st.nan + st.inf),
        ]
    cells.append(_cell(str(rep.distinct) if rep.distinct is not None else "", rep.distinct))
    if sp is None:
        cells += [_cell("")] * 3
    else:  # (power iteration: the norm is a lower bound, marked)
        approx = "&asymp;" if sp.method != "exact" else ""
        cells += [
            _cell(approx + _num(sp.spectral_norm), sp.spectral_norm),
            _cell(approx + _num(sp.stable_rank), sp.stable_rank),
            _cell(
                _num(sp.effective_rank) if sp.effective_rank is not None else "", sp.effective_rank
            ),
        ]
    return f'<tr data-name="{_e(t.name)}">' + "".join(cells) + "</tr>"


def _tensors(result: ReportResult) -> str:
    reps = result.figures.tensors
    head = "".join(
        f'<th scope="col" class="{cls}"{" data-num" if num else ""}>{_e(h)}</th>'
        for h, cls, num in TENSOR_HEADERS
    )
    rows = "".join(_tensor_row(r) for r in reps)
    return (
        f'<label for="filter">Find tensors by name: </label><input type="search" id="filter" '
        f'placeholder="e.g. dense/kernel" autocomplete="off"> '
        f'<span class="mute"><span id="shown">{len(reps)}</span> of {len(reps)} shown; '
        "click a column heading to sort</span>"
        + _legend()
        + f'<div class="scroll"><table id="tensors" class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def _spectral_note(exact_side: int) -> str:
    return (
        '<p class="mute">Spectral figures treat a kernel as a matrix: every axis but the last '
        "as rows (a conv kernel (kh, kw, in, out) is (kh&middot;kw&middot;in, out)). They are "
        "exact (every singular value, from a float64 Gram matrix: W<sup>T</sup>W or "
        f"WW<sup>T</sup>, the smaller) when the matrix's smaller side is at most {exact_side} "
        f"(and, for kernels of over {WHOLE_ELEMS:,} elements, summed over row blocks in at "
        f"most {GRAM_FLOPS:,} multiply-adds); otherwise the spectral norm comes from "
        f"{POWER_ITERATIONS} rounds of power iteration from a seeded random start (a lower "
        "bound, marked "
        "&asymp;), the stable rank from it, and the effective rank is not computed "
        "(<code>--exact-side N</code> sets the cap, up to "
        f"{EXACT_SIDE_MAX}). Stable "
        "rank: &Vert;W&Vert;<sub>F</sub><sup>2</sup> / &Vert;W&Vert;<sub>2</sub><sup>2</sup>. "
        "Effective rank: exp of the entropy of the normalised singular values (Roy and "
        f"Vetterli, 2007). Flags: a weight matrix with max |x| or spectral norm above "
        f"{EXPLODING:g} is exploding; an outlier's RMS sits at least 10x and {OUTLIER_Z:g} "
        "robust z-scores (median, MAD) from the kernels of its kind in layers of its class "
        "(five or more).</p>"
    )


def _change_chart(diff: DiffResult) -> str:
    """A bar per tensor pair in model order; one with no finite measure (NaN/Inf in
    it) is drawn full height, hatched, its tooltip says why."""
    rows = [r for r in diff.rows if r.a is not None and r.b is not None]
    if not rows:
        return '<p class="mute">No tensor pair to compare.</p>'
    finite = [r.rel_l2 for r in rows if r.rel_l2 is not None and math.isfinite(r.rel_l2)]
    top = max(finite, default=0.0)
    n = len(rows)
    w = 1000 / n
    bar = min(max(w * 0.8, 0.5), 16.0)  # a few tensors: thin bars, not blocks
    bars = ['<path d="M0 99.5H1000" stroke="#d0d7de" stroke-width="1"/>']
    for i, r in enumerate(rows):
        v = r.rel_l2
        if v is None or not math.isfinite(v):
            h = 100.0 if r.status not in EQUAL_STATUSES else 0.0
            tip = f"{r.name}: {r.status}, no finite relative change"
        else:
            h = v / top * 100 if top else 0.0
            tip = f"{r.name}: relative change {fmt_num(v)}"
        bars.append(
            f'<rect x="{i * w + (w - bar) / 2:.2f}" y="{100 - h:.1f}" width="{bar:.2f}" '
            f'height="{max(h, 0.0):.1f}"><title>{_e(tip)}</title></rect>'
        )
    label = (
        f"Relative change ||after - before|| / ||before|| of {n} tensors in model order; "
        f"the tallest bar is {fmt_num(top)}"
    )
    return (
        f'<svg class="change" viewBox="0 0 1000 100" preserveAspectRatio="none" role="img" '
        f'aria-label="{_e(label)}"><title>{_e(label)}</title>{"".join(bars)}</svg>'
        f'<p class="legend">{_e(label)}, over the pairs where both values are finite '
        "(hover a bar for its tensor).</p>"
    )


LARGEST = 25


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _largest(diff: DiffResult) -> str:
    """Changed tensors, largest relative change first; those with no finite measure
    (a shape or dtype change, a side missing, NaN/Inf) before them, always listed."""
    changed = [r for r in diff.rows if r.status not in EQUAL_STATUSES]
    others = [r for r in changed if not _finite(r.rel_l2)]
    rows = [r for r in changed if _finite(r.rel_l2)]
    rows.sort(key=lambda r: -(r.rel_l2 or 0.0))
    body = []
    for r in [*others, *rows[:LARGEST]]:
        rel = _num(r.rel_l2) if _finite(r.rel_l2) else "n/a"
        body.append(
            f'<tr data-name="{_e(r.name)}"><td class="l name"><code>{_e(r.name)}</code></td>'
            f'<td class="l">{_e(r.status)}</td>'
            + _cell(rel, r.rel_l2)
            + _cell(_num(r.max_abs), r.max_abs)
            + _cell(_num(r.cosine), r.cosine)
            + _cell(
                f"{-r.sparsity_change * 100:+.2f}" if r.sparsity_change is not None else "",
                -r.sparsity_change if r.sparsity_change is not None else None,
            )
            + "</tr>"
        )
    if not body:
        return '<p class="mute">No tensor changed.</p>'
    head = "".join(
        f'<th scope="col" class="{c}"{" data-num" if num else ""}>{h}</th>'
        for h, c, num in (
            ("Tensor", "l", False),
            ("Status", "l", False),
            ("Relative change", "", True),
            ("Max |change|", "", True),
            ("Cosine", "", True),
            ("Zeros, after &minus; before (points)", "", True),
        )
    )
    more = len(rows) - LARGEST
    note = (
        f'<p class="mute">{more} smaller changes not listed (the chart shows them).</p>'
        if more > 0
        else ""
    )
    return (
        f'<div class="scroll"><table class="sortable" id="largest"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>{note}"
    )


def _comparison(result: ReportResult) -> str:
    diff = result.diff
    if diff is None:
        return ""
    figs = "".join(
        f"<figure>{_hist_svg(o.after, o.name, o.before)}<figcaption><code>{_e(o.name)}</code>"
        "</figcaption></figure>"
        for o in result.overlays
    )
    return (
        f'<section id="change"><h2>Change against {_e(result.against)}</h2>'
        f"<p><strong>{_e(diff.verdict)}</strong></p>"
        + _change_chart(diff)
        + "<h3>Largest changes</h3>"
        + _largest(diff)
        + (
            "<h3>Values before and after</h3>"
            + _legend(overlay=True)
            + f'<div class="overlays">{figs}</div>'
            if figs
            else ""
        )
        + "</section>"
    )


def render(result: ReportResult) -> str:
    """The page, as one string of HTML."""
    name = result.path.name or str(result.path)
    meta = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in _meta_rows(result))
    parts: Iterable[str] = (
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>weightcli report: {_e(name)}</title><style>{STYLE}</style></head><body>",
        f"<header><h1>{_e(result.path)}</h1>",
        f'<p class="mute">weightcli {_e(__version__)} report</p>',
        f'<dl class="meta">{meta}</dl></header>',
        '<section id="flags"><h2>Look here first</h2>' + _flags(result) + "</section>",
        _comparison(result),
        '<section id="history"><h2>History</h2>'
        + _history(result.figures.meta.history)
        + "</section>",
        '<section id="tensor-list"><h2>Tensors</h2>'
        + _tensors(result)
        + _spectral_note(result.exact_side)
        + "</section>",
        f"<script>{SCRIPT}</script></body></html>\n",
    )
    return "\n".join(parts)
