"""``diff``: compare two checkpoints tensor by tensor, matched by canonical name.

Tolerance has numpy's meaning: an element pair is close when
``|a - b| <= atol + rtol * |b|`` (B is the reference), computed by ``np.isclose``
itself. NaN is close to nothing unless ``nan_equal``; infinities are close only
to the same infinity. Tensors are read as aligned block pairs, so memory stays
bounded by a block whatever their size.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from weightcli import native
from weightcli.errors import ParameterError, literal
from weightcli.prefetch import ahead
from weightcli.results import DiffResult, DiffStatus, TensorDiff
from weightcli.select import Selection
from weightcli.stores import Store
from weightcli.stores.base import BLOCK_ELEMS, Block
from weightcli.stores.interrupts import start_shielded

IDENTICAL = DiffStatus.IDENTICAL
WITHIN = DiffStatus.WITHIN
DIFFERS = DiffStatus.DIFFERS
ONLY_A = DiffStatus.ONLY_A
ONLY_B = DiffStatus.ONLY_B
SHAPE = DiffStatus.SHAPE
DTYPE = DiffStatus.DTYPE


def parse_map(spec: str) -> tuple[str, str]:
    """``OLD=NEW``: a glob with ``*`` (each captured, put in NEW's ``*`` in order) or a
    prefix; ``re:PATTERN=NEW``: a Python regular expression matching the whole name (no
    ``=`` in it), NEW with ``\\1``-style groups."""
    old, sep, new = spec.partition("=")
    shown = literal(repr(spec))
    if not sep or not old:
        raise ParameterError(f"{{map}} takes OLD=NEW, got {shown}")
    if old.startswith("re:"):
        try:
            pattern = re.compile(old[3:])
            groups = [int(g) for g in re.findall(r"\\(\d+)", new)]
        except re.error as exc:
            raise ParameterError(f"{{map}} {shown}: not a regular expression: {exc}") from None
        if any(g > pattern.groups for g in groups):
            raise ParameterError(f"{{map}} {shown}: NEW names a group the pattern does not have")
        return old, new
    if old.count("*") != new.count("*"):
        raise ParameterError(f"{{map}} {shown}: OLD and NEW need the same number of '*'")
    return old, new


def read_map_file(path: Path) -> tuple[str, ...]:
    """A file of rename rules, in order (the first matching rule wins), each checked:
    one ``OLD=NEW`` a line (as ``map`` takes them; blank lines and ``#`` comments
    skipped), or JSON: an object ``{"OLD": "NEW", ...}`` or a list of ``[OLD, NEW]``."""
    from weightcli.stores import capped

    text = capped.read_bytes(path, capped.RECIPE_BYTES, "map file").decode(errors="replace")
    if text.lstrip()[:1] in ("{", "["):
        return _json_map(path, capped.parse_json(text, str(path), unique=True))
    rules = []
    for number, line in enumerate(text.splitlines(), 1):
        rule = line.split("#", 1)[0].strip()
        if not rule:
            continue
        try:
            parse_map(rule)
        except ParameterError as exc:
            raise ParameterError(f"{literal(path)} line {number}: {exc.template}") from None
        rules.append(rule)
    if not rules:
        raise ParameterError(f"{literal(path)}: no OLD=NEW rule in the {{map_file}}")
    return tuple(rules)


def _json_map(path: Path, doc: object) -> tuple[str, ...]:
    pairs = list(doc.items()) if isinstance(doc, dict) else doc
    if not isinstance(pairs, list) or not all(
        isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(x, str) for x in p)
        for p in pairs
    ):
        raise ParameterError(
            f"{literal(path)}: a JSON {{map_file}} is an object of OLD: NEW or a list of "
            "[OLD, NEW] pairs"
        )
    rules = []
    for old, new in pairs:
        if "=" in old:
            raise ParameterError(f"{literal(path)}: {literal(repr(old))}: OLD may not hold '='")
        try:
            parse_map(f"{old}={new}")
        except ParameterError as exc:
            raise ParameterError(f"{literal(path)}: {exc.template}") from None
        rules.append(f"{old}={new}")
    if not rules:
        raise ParameterError(f"{literal(path)}: no rule in the {{map_file}}")
    return tuple(rules)


def rename(name: str, maps: Sequence[tuple[str, str]]) -> str:
    """Apply the first matching ``--map``: a regular expression (``re:``), a glob with
    ``*`` (captured in order), else a prefix."""
    for old, new in maps:
        if old.startswith("re:"):
            hit = re.fullmatch(old[3:], name)
            if hit:
                return hit.expand(new)
            continue
        if "*" in old:
            pattern = "^" + "(.*?)".join(re.escape(p) for p in old.split("*")) + "$"
            m = re.match(pattern, name)
            if m:
                out = new
                for g in m.groups():
                    out = out.replace("*", g, 1)
                return out
        elif name.startswith(old):
            return new + name[len(old) :]
    return name


# Elements compared at once: float64 copies of two slices stay in cache.
SLICE = 1 << 16


class _Acc:
    """Streaming difference metrics for one tensor pair."""

    def __init__(self, atol: float, rtol: float, nan_equal: bool) -> None:
        self.atol, self.rtol, self.nan_equal = atol, rtol, nan_equal
        self.identical = True
        self.beyond = 0
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.n = 0
        self.dd = 0.0
        self.aa = 0.0
        self.bb = 0.0
        self.ab = 0.0
        self.zeros_delta = 0  # exact zeros in B minus in A (counted where values differ)

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        if a.dtype.kind not in "fiub" and a.dtype.name != "bfloat16":
            same = np.array_equal(a, b)
            self.identical &= same
            self.beyond += 0 if same else a.size
            return
        fa, fb = a.reshape(-1), b.reshape(-1)
        fast = native.diff_f32(fa, fb, self.atol, self.rtol)
        if fast is not None:  # float32 both, no NaN/Inf: one fused pass (native.py)
            beyond, worst, sum_abs, dd, aa, bb, ab, zeros_a, zeros_b = fast
            if worst > 0:
                self.identical = False
                self.beyond += beyond
                self.max_abs = max(self.max_abs, worst)
                self.sum_abs += sum_abs
                self.dd += dd
            # (equal values have equal zeros: the difference counts only where they differ)
            self.zeros_delta += zeros_b - zeros_a
            self.aa += aa
            self.bb += bb
            self.ab += ab
            self.n += fa.size
            return
        for i in range(0, max(fa.size, 1), SLICE):
            self._slice(fa[i : i + SLICE], fb[i : i + SLICE])

    def _slice(self, a: np.ndarray, b: np.ndarray) -> None:
        if a.size == 0:
            return
        if a.dtype == b.dtype and a.dtype.kind == "f" and a.dtype.itemsize >= 4:
            # One float dtype: work in it, as np.isclose does (atol, rtol are weak scalars).
            d = np.subtract(a, b)
            ad = np.abs(d, out=d)
            worst = float(ad.max())
            # NaN or Inf in either input would make some |a - b| NaN or Inf (so would an
            # overflow): a finite largest difference means every element is finite.
            if math.isfinite(worst):
                self._finite(a, b, ad, worst)
                return
            self._general(a, b, True)
            return
        x = np.asarray(a, dtype=np.float64)
        y = np.asarray(b, dtype=np.float64)
        ad = np.abs(x - y)
        worst = float(ad.max())
        if math.isfinite(worst):
            self._finite(x, y, ad, worst, a.dtype == b.dtype)
            return
        self._general(x, y, a.dtype == b.dtype)

    def _finite(
        self, x: np.ndarray, y: np.ndarray, ad: np.ndarray, worst: float, same: bool = True
    ) -> None:
        """Every element finite: numpy's rule |a - b| <= atol + rtol * |b|, computed as
        np.isclose computes it, with each pass over the slice done once."""
        if worst > 0:
            self.identical = False
            self.zeros_delta += int(np.count_nonzero(y == 0)) - int(np.count_nonzero(x == 0))
            if self.rtol:
                limit = self.atol + self.rtol * np.abs(y)
                self.beyond += int(np.count_nonzero(ad > limit))
            elif worst > self.atol:
                self.beyond += int(np.count_nonzero(ad > ad.dtype.type(self.atol)))
            self.max_abs = max(self.max_abs, worst)
            self.sum_abs += float(ad.sum())  # pairwise summation, then float64 across slices
            self.dd += float(np.dot(ad, ad))
            self.aa += float(np.dot(x, x))
            self.bb += float(np.dot(y, y))
            self.ab += float(np.dot(x, y))
        else:  # equal values: one norm serves all three
            self.identical &= same
            sq = float(np.dot(x, x))
            self.aa += sq
            self.bb += sq
            self.ab += sq
        self.n += x.size

    def _general(self, xw: np.ndarray, yw: np.ndarray, same_dtype: bool) -> None:
        """Slices holding NaN or Inf: np.isclose itself decides, in the same working dtype
        as the fast path (numpy computes in float32 for float32 tensors)."""
        if self.identical:
            eq = (xw == yw) | (np.isnan(xw) & np.isnan(yw) & self.nan_equal)
            self.identical = bool(eq.all()) and same_dtype
        self.zeros_delta += int(np.count_nonzero(yw == 0)) - int(np.count_nonzero(xw == 0))
        close = np.isclose(xw, yw, rtol=self.rtol, atol=self.atol, equal_nan=self.nan_equal)
        self.beyond += int(close.size - np.count_nonzero(close))
        x = xw.astype(np.float64)
        y = yw.astype(np.float64)
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.all():
            x, y = x[ok], y[ok]
        d = np.abs(x - y)
        if d.size:
            self.max_abs = max(self.max_abs, float(d.max()))
            self.sum_abs += float(d.sum())
        self.n += d.size
        self.dd += float(np.dot(d.ravel(), d.ravel()))
        self.aa += float(np.dot(x.ravel(), x.ravel()))
        self.bb += float(np.dot(y.ravel(), y.ravel()))
        self.ab += float(np.dot(x.ravel(), y.ravel()))

    def merge(self, other: _Acc) -> None:
        """Add what ``other`` accumulated over other blocks of the same tensor pair."""
        self.identical &= other.identical
        self.beyond += other.beyond
        self.max_abs = max(self.max_abs, other.max_abs)
        self.sum_abs += other.sum_abs
        self.n += other.n
        self.dd += other.dd
        self.aa += other.aa
        self.bb += other.bb
        self.ab += other.ab
        self.zeros_delta += other.zeros_delta

    def finish(self, row: TensorDiff) -> None:
        row.beyond = self.beyond
        row.sparsity_change = self.zeros_delta / row.size if row.size else 0.0
        row.max_abs = self.max_abs
        row.mean_abs = self.sum_abs / self.n if self.n else 0.0
        if self.bb > 0:
            row.rel_l2 = math.sqrt(self.dd / self.bb)
        else:
            row.rel_l2 = 0.0 if self.dd == 0 else math.inf
        if self.aa > 0 and self.bb > 0:
            row.cosine = self.ab / math.sqrt(self.aa * self.bb)
        elif self.aa == 0 and self.bb == 0:
            row.cosine = 1.0
        else:
            row.cosine = 0.0


def check_tolerances(atol: float, rtol: float) -> None:
    """numpy's tolerances: finite and >= 0."""
    for v, n in ((atol, "atol"), (rtol, "rtol")):
        if not (math.isfinite(v) and v >= 0):
            raise ParameterError(f"{{{n}}} must be a finite number >= 0, got {v}")


def diff_stores(
    sa: Store,
    sb: Store,
    sel: Selection,
    maps: Sequence[tuple[str, str]] = (),
    atol: float = 0.0,
    rtol: float = 0.0,
    nan_equal: bool = False,
    structure: bool = False,
    block_elems: int = BLOCK_ELEMS,
    ignore_dtype: bool = False,
    match_by: str = "name",
) -> DiffResult:
    """Compare every selected tensor of A with B's tensor of the same (mapped) name
    (``ignore_dtype``: by value only, after casting both to float64)."""
    check_tolerances(atol, rtol)
    ta = {rename(t.name, maps): t for t in sa.tensors() if sel.matches(t) and t.dtype != "string"}
    tb = {t.name: t for t in sb.tensors() if sel.matches(t) and t.dtype != "string"}
    if match_by == "order":  # the i-th tensor of A (in model order) with B's i-th, by B's name
        listed_b = list(tb)
        ta = {
            (listed_b[i] if i < len(listed_b) else f"{t.name} (A's #{i + 1})"): t
            for i, t in enumerate(ta.values())
        }
    result = DiffResult(
        str(sa.path), str(sb.path), atol, rtol, nan_equal, structure, ignore_dtype=ignore_dtype
    )
    for name in list(ta) + [n for n in tb if n not in ta]:
        a, b = ta.get(name), tb.get(name)
        if a is None:
            result.rows.append(TensorDiff(name, ONLY_B, None, b, size=b.size if b else 0))
            continue
        if b is None:
            result.rows.append(TensorDiff(name, ONLY_A, a, None, size=a.size))
            continue
        row = TensorDiff(name, IDENTICAL, a, b, size=a.size)
        if a.shape != b.shape:
            row.status = SHAPE
        elif structure:
            row.status = DTYPE if a.dtype != b.dtype and not ignore_dtype else IDENTICAL
        else:
            acc = _Acc(atol, rtol, nan_equal)
            if a.size > block_elems and native.fused(a.dtype, b.dtype):
                # Several blocks, compared by a native kernel faster than they are read:
                # each side read ahead by a thread of its own, compared here.
                ra = ahead(sa.blocks(a, block_elems), depth=3)
                rb = ahead(sb.blocks(b, block_elems), depth=3)
                try:
                    for (_, xa), (_, xb) in zip(ra, rb, strict=True):
                        acc.update(xa, xb)
                finally:  # both readers stopped and joined, whatever happened
                    ra.close()
                    rb.close()
            else:
                pairs: Iterator[tuple[tuple[Block, np.ndarray], tuple[Block, np.ndarray]]] = zip(
                    sa.blocks(a, block_elems), sb.blocks(b, block_elems), strict=True
                )
                if a.size > block_elems:
                    # Several blocks: the next pairs are read by one thread while two compare.
                    _compare_in_two(ahead(pairs, depth=3), acc, atol, rtol, nan_equal)
                else:
                    for (_, xa), (_, xb) in pairs:
                        acc.update(xa, xb)
            acc.finish(row)
            if a.dtype != b.dtype and not ignore_dtype:
                row.status = DTYPE
            elif acc.identical:
                row.status = IDENTICAL
            elif acc.beyond == 0:
                row.status = WITHIN
            else:
                row.status = DIFFERS
        result.rows.append(row)
    return result


def _compare_in_two(
    pairs: Iterator[tuple[tuple[Block, np.ndarray], tuple[Block, np.ndarray]]],
    acc: _Acc,
    atol: float,
    rtol: float,
    nan_equal: bool,
) -> None:
    """Block pairs compared by this thread and one more, each taking the next pair
    (numpy's loops release the GIL: on two cores the comparisons overlap); the other
    thread's metrics merged into ``acc``. An error in either is raised here."""
    lock = threading.Lock()
    other = _Acc(atol, rtol, nan_equal)
    failed: list[BaseException] = []

    def take(into: _Acc) -> None:
        try:
            while not failed:
                with lock:
                    item = next(pairs, None)
                if item is None:
                    return
                (_, xa), (_, xb) = item
                into.update(xa, xb)
        except BaseException as exc:  # raised by the caller
            failed.append(exc)

    helper = threading.Thread(target=take, args=(other,), name="weightcli-compare", daemon=True)
    start_shielded(helper)
    try:
        take(acc)
    finally:
        helper.join()
        close = getattr(pairs, "close", None)
        if close is not None:
            with lock:
                close()  # the read-ahead thread stops and is joined
    if failed:
        raise failed[0]
    acc.merge(other)
