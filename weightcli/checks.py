"""The checks of ``verify`` that need no framework: static checks and, with a
reference, structure and re-initialisation checks. The load and forward-pass
checks live in ``framework.py``, the only module that imports TensorFlow.

Each check ends PASS, WARN, FAIL or SKIP with one detail line.
"""

from __future__ import annotations

import math

import numpy as np

from weightcli.compare import IDENTICAL, diff_stores
from weightcli.dtypes import finfo_max
from weightcli.errors import CorruptError
from weightcli.results import Check, CheckStatus
from weightcli.results import name_list as _names
from weightcli.select import Selection
from weightcli.stats import RunningStats, TensorStats
from weightcli.stores import Store
from weightcli.stores.quantized import DequantizedStore, has_quantized
from weightcli.tensor import TensorInfo

PASS, WARN, FAIL, SKIP = CheckStatus.PASS, CheckStatus.WARN, CheckStatus.FAIL, CheckStatus.SKIP
KERNEL_KINDS = {"kernel", "depthwise_kernel", "pointwise_kernel", "recurrent_kernel", "embeddings"}
# Re-initialisation: a tensor of at least this many elements whose values correlate
# with the reference's less than this, at a similar scale.
REINIT_MIN_ELEMS = 64
REINIT_MAX_CORR = 0.5
REINIT_SCALE_RANGE = (0.1, 10.0)


def _dequantized_nonfinite(store: Store) -> list[str]:
    """Natively quantized layers whose weights (codes / scale) hold NaN/Inf: a zero or
    non-finite scale, invisible in the integer codes themselves."""
    if not has_quantized(store):
        return []
    view = DequantizedStore(store)
    out = []
    for t in view.tensors():
        if t.name not in view.dequantized:
            continue
        acc = RunningStats()
        for _, block in view.blocks(t):
            acc.update(block)
        s = acc.result()
        if s.nonfinite:
            out.append(f"{t.name} ({s.nan} NaN, {s.inf} Inf, dequantized)")
    return out


def static_checks(store: Store) -> tuple[list[Check], dict[str, TensorStats]]:
    """Readable (checksums), finite, no all-zero kernels, copies agree, float16 not saturated."""
    tensors = store.tensors()
    stats: dict[str, TensorStats] = {}
    unreadable: list[str] = []
    for t in tensors:
        try:
            acc = RunningStats()
            for _, block in store.blocks(t):  # verifies the streamed copy's checksum
                acc.update(block)
            if t.copies:
                store.check(t)  # the other stored copies
            if t.dtype != "string":
                stats[t.name] = acc.result()
        except CorruptError as exc:
            unreadable.append(f"{t.name} ({exc})" if t.name not in str(exc) else str(exc))
    checks = [
        Check(
            "readable",
            FAIL,
            f"{len(unreadable)} tensors unreadable: {_names(unreadable, 3)}",
            {"tensors": unreadable},
        )
        if unreadable
        else Check(
            "readable",
            PASS,
            f"all {len(tensors)} tensors read"
            + (" and checksums verified" if store.meta.checksums else ""),
        )
    ]
    bad = [f"{n} ({s.nan} NaN, {s.inf} Inf)" for n, s in stats.items() if s.nonfinite]
    bad += _dequantized_nonfinite(store)
    checks.append(
        Check(
            "finite",
            FAIL,
            f"{len(bad)} tensors hold NaN/Inf: {_names(bad)}",
            {"tensors": [b.split(" (")[0] for b in bad]},
        )
        if bad
        else Check("finite", PASS, "no NaN or Inf")
    )
    by_name = {t.name: t for t in tensors}
    zero = [
        n
        for n, s in stats.items()
        if by_name[n].kind in KERNEL_KINDS and s.count and s.zeros == s.count
    ]
    checks.append(
        Check("no all-zero kernels", WARN, f"all zeros: {_names(zero)}", {"tensors": zero})
        if zero
        else Check("no all-zero kernels", PASS, "every kernel has non-zero values")
    )
    checks.append(_copies_agree(store, tensors))
    sat = []
    for n, s in stats.items():
        t = by_name[n]
        if (
            t.dtype in ("float16", "bfloat16")
            and s.abs_max is not None
            and s.abs_max >= finfo_max(t.dtype)
        ):
            sat.append(n)
    low = [t for t in tensors if t.dtype in ("float16", "bfloat16")]
    if sat:
        checks.append(
            Check(
                "float16 not saturated",
                WARN,
                f"values at the {low[0].dtype} limit: {_names(sat)}",
                {"tensors": sat},
            )
        )
    elif low:
        checks.append(
            Check("float16 not saturated", PASS, f"{len(low)} half-precision tensors within range")
        )
    return checks, stats


def _copies_agree(store: Store, tensors: list[TensorInfo]) -> Check:
    multi = [t for t in tensors if t.copies]
    if not multi:
        return Check("copies agree", SKIP, "no variable is stored twice")
    read_copy = getattr(store, "read_copy", None)
    disagree = []
    for t in multi:
        first = store.read(t)
        for key in t.copies:
            other = read_copy(t, key) if read_copy else first
            if not np.array_equal(first, other, equal_nan=True):
                disagree.append(f"{t.name} ({t.path} vs {key})")
    if disagree:
        return Check(
            "copies agree",
            FAIL,
            f"copies of one variable disagree: {_names(disagree, 3)}",
            {"tensors": disagree},
        )
    return Check(
        "copies agree", PASS, f"{len(multi)} variables stored more than once, every copy equal"
    )


def reference_checks(store: Store, ref: Store) -> list[Check]:
    """Same names, shapes and dtypes as REF; no tensor that looks re-initialised."""
    sel = Selection(floats_only=False)
    converted = [s.path.name for s in (store, ref) if s.meta.format == "tflite"]
    if converted and store.meta.format != ref.meta.format:
        return [
            Check(
                "same structure as reference",
                SKIP,
                f"{converted[0]} names its tensors as TensorFlow's converter did (and stores "
                "kernels in its own layouts): the outputs are compared instead",
            )
        ]
    structure = diff_stores(store, ref, sel, structure=True)
    problems = [f"{r.name}: {r.status}" for r in structure.rows if r.status != IDENTICAL]
    checks = [
        Check(
            "same structure as reference",
            FAIL,
            f"{len(problems)} differences: {_names(problems)}",
            {"tensors": problems},
        )
        if problems
        else Check(
            "same structure as reference",
            PASS,
            f"{len(structure.rows)} tensors: names, shapes and dtypes match",
        )
    ]
    mine = {t.name: t for t in store.tensors() if not t.optimizer and t.is_float}
    theirs = {t.name: t for t in ref.tensors() if not t.optimizer and t.is_float}
    suspects = []
    checked = 0
    for name, t in mine.items():
        r = theirs.get(name)
        if r is None or r.shape != t.shape or t.size < REINIT_MIN_ELEMS or t.ndim < 2:
            continue
        checked += 1
        corr, ratio = correlation(store, t, ref, r)
        lo, hi = REINIT_SCALE_RANGE
        if (
            corr is not None
            and abs(corr) < REINIT_MAX_CORR
            and ratio is not None
            and lo <= ratio <= hi
        ):
            suspects.append(f"{name} (correlation {corr:.2f}, scale ratio {ratio:.2f})")
    if suspects:
        checks.append(
            Check(
                "not re-initialised",
                FAIL,
                f"look re-initialised, not loaded: {_names(suspects)}",
                {"tensors": [s.split(" (")[0] for s in suspects]},
            )
        )
    else:
        checks.append(
            Check(
                "not re-initialised", PASS, f"{checked} weight tensors correlate with the reference"
            )
        )
    return checks


def correlation(
    sa: Store, a: TensorInfo, sb: Store, b: TensorInfo
) -> tuple[float | None, float | None]:
    """Pearson correlation of two same-shape tensors and the ratio of their std (A / B), streamed."""
    n = 0
    sx = sy = sxx = syy = sxy = 0.0
    for (_, xa), (_, xb) in zip(sa.blocks(a), sb.blocks(b), strict=True):
        x = np.asarray(xa, np.float64).ravel()
        y = np.asarray(xb, np.float64).ravel()
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        n += x.size
        sx += float(x.sum())
        sy += float(y.sum())
        sxx += float(x @ x)
        syy += float(y @ y)
        sxy += float(x @ y)
    if n < 2:
        return None, None
    vx = sxx / n - (sx / n) ** 2
    vy = syy / n - (sy / n) ** 2
    if vx <= 0 or vy <= 0:
        return None, None
    cov = sxy / n - (sx / n) * (sy / n)
    return cov / math.sqrt(vx * vy), math.sqrt(vx / vy)
