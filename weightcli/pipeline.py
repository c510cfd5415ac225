"""The transform pipeline: stream tensors from a source store, through the steps,
into a patched copy of the container.

Each tensor is read in blocks. Steps that need statistics first get their passes
(earlier steps re-applied on the fly, so every step sees its real input); the last
pass transforms and writes. A tensor that fits in one block is read once. Only
changed tensors are written; everything else in the container keeps its bytes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from weightcli import native
from weightcli.child import end_with_parent
from weightcli.digest import check_algorithm, default_algorithm, digest, total_size
from weightcli.errors import UnsupportedError, UsageError, literal
from weightcli.params import OutputSpec
from weightcli.prefetch import ahead
from weightcli.results import TensorChange, TransformResult
from weightcli.select import apply as apply_selection
from weightcli.stats import RunningStats, TensorStats
from weightcli.steps import Step, TensorOp
from weightcli.stores.base import BLOCK_ELEMS, Block, Patcher, Provenance, Store
from weightcli.stores.interrupts import start_shielded
from weightcli.stores.quantized import RequantizedStore
from weightcli.stores.remote import is_url
from weightcli.tensor import TensorInfo

_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


# Sources at least this large are hashed by a child process; smaller ones by a thread.
CHILD_DIGEST_BYTES = 256 * 1024 * 1024


class Digest:
    """The digest manifest (``weightcli.digest``) of one or more paths, by
    ``algorithm``, computed on the other core(s) meanwhile.

    Large sources: one child process (one thread per path in it), since a thread's hash
    and the main thread's many short numpy calls take turns at the GIL (seconds per GB
    here). Small sources: threads, which cost no second interpreter (about 16 MiB).
    """

    def __init__(self, path: Path | Sequence[Path], algorithm: str | None = None) -> None:
        self.paths = [path] if isinstance(path, Path) else list(path)
        self.path = self.paths[0]
        self.algorithm = check_algorithm(algorithm or default_algorithm())
        self.proc: subprocess.Popen[str] | None = None
        self.threads: list[threading.Thread] = []
        self.values: dict[Path, dict[str, Any]] = {}
        self.error: BaseException | None = None
        if self.algorithm == "none" or sum(total_size(p) for p in self.paths) < CHILD_DIGEST_BYTES:
            for p in self.paths:
                t = threading.Thread(target=self._run, args=(p,), daemon=True)
                start_shielded(t)
                self.threads.append(t)
            return
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "weightcli.digest", self.algorithm, *map(str, self.paths)],
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")])
                ),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=end_with_parent,
        )

    def _run(self, path: Path) -> None:
        try:
            self.values[path] = digest(path, self.algorithm)
        except BaseException as exc:  # reported by result()
            self.error = exc

    def result(self, path: Path | None = None) -> dict[str, Any]:
        """The manifest of ``path`` (default: the first path); waits for it."""
        path = self.path if path is None else path
        if path in self.values:
            return self.values[path]
        if self.proc is None:
            for t in self.threads:
                t.join()
            if self.error is not None:
                raise self.error
            return self.values[path]
        out, err = self.proc.communicate()
        if self.proc.returncode != 0:
            last = err.strip().splitlines()[-1:] or ["unknown error"]
            raise OSError(f"{path}: cannot hash the source: {last[0]}")
        self.values.update(
            zip(self.paths, (json.loads(line) for line in out.splitlines()), strict=True)
        )
        return self.values[path]

    def of(self, path: Path) -> DigestOf:
        """A handle for one of the paths (``result()`` and ``cancel()``, as a Digest)."""
        return DigestOf(self, path)

    def cancel(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class DigestOf:
    """One path's hash, out of a :class:`Digest` of several."""

    def __init__(self, group: Digest, path: Path) -> None:
        self.group = group
        self.path = path

    def result(self) -> dict[str, Any]:
        return self.group.result(self.path)

    def cancel(self) -> None:
        self.group.cancel()


class _Blocks:
    """Blocks of one tensor; read once and kept when the tensor is a single block."""

    def __init__(
        self,
        store: Store,
        info: TensorInfo,
        block_elems: int,
        align: tuple[int, int] | None = None,
    ) -> None:
        self.store = store
        self.info = info
        self.block_elems = block_elems
        self.align = align
        self.single = info.size <= block_elems
        self._cache: list[tuple[Block, np.ndarray]] | None = None

    def _read(self) -> Iterator[tuple[Block, np.ndarray]]:
        if self.align is None:  # the common call (a store may not know ``align``)
            return self.store.blocks(self.info, self.block_elems)
        return self.store.blocks(self.info, self.block_elems, self.align)

    def __iter__(self) -> Iterator[tuple[Block, np.ndarray]]:
        if self._cache is not None:
            return iter(self._cache)
        if self.single:
            self._cache = list(self._read())
            return iter(self._cache)
        return self._read()


# Tensors of at least this many elements are read ahead by a thread (smaller ones would
# spend more on starting the thread than they gain).
READ_AHEAD_ELEMS = 4 * BLOCK_ELEMS


def plan(
    store: Store, steps: Sequence[Step], block_elems: int = BLOCK_ELEMS
) -> list[tuple[TensorInfo, list[TensorOp]]]:
    """Which tensors each step touches; a step that selects nothing is an error."""
    tensors = store.tensors()
    for step in steps:
        step.check(tensors)
        step.prepare(store, [t for t in tensors if step.selects(t) and t.size], block_elems)
    for i, step in enumerate(steps):
        chosen = [t for t in tensors if step.selects(t)]
        if not chosen:
            what = f"step {i + 1} ({step.command})" if len(steps) > 1 else "the selection"
            apply_selection(
                tensors, step.selection, store.meta.has_config, what
            )  # raises with names
            why = step.why_nothing(tensors)
            raise UsageError.naming(
                f"{literal(what)} matches no tensor it can change" + (f" ({why})" if why else "")
            )
    out = []
    for t in tensors:
        if t.size == 0:
            continue  # nothing to transform in an empty tensor
        ops = [op for s in steps if s.selects(t) and (op := s.op(t)) is not None]
        if ops:
            out.append((t, ops))
    return out


def run(
    store: Store,
    steps: Sequence[Step],
    out: Path | None,
    command: Sequence[str],
    spec: OutputSpec | None = None,
    block_elems: int = BLOCK_ELEMS,
    source_digest: Digest | DigestOf | None = None,
) -> TransformResult:
    """Apply ``steps`` to ``store`` and write the patched copy to ``out`` (nothing when
    ``spec.dry_run``; ``spec`` is the request's output group, a default one when None),
    reading tensors in blocks of at most ``block_elems`` elements.

    A tensor that would hold more NaN or Inf values after the steps than before (an
    overflow) is an error, and nothing is written, unless ``allow_nonfinite``. When
    ``out`` is the source itself (``in_place``) and no tensor changed, the source is left
    untouched: no rewrite, no history entry. Without ``overwrite`` (``--force``), an
    ``out`` that appears while the output is written is never replaced."""
    spec = spec or OutputSpec()
    if spec.requantize:
        store = RequantizedStore.of(store)
    dry_run, in_place, note = spec.dry_run, spec.in_place, spec.note
    overwrite, allow_nonfinite = spec.force, spec.allow_nonfinite
    started = time.perf_counter()
    work = plan(store, steps, block_elems)
    # The source's sha256 (for the history) is computed on the other core meanwhile.
    # In object storage: the local copy the patcher works from (downloaded once).
    hasher = None if dry_run else source_digest or Digest(store.local_copy(), spec.digest)
    retype = {t.path: ops[-1].out_dtype for t, ops in work if ops[-1].out_dtype != t.dtype}
    for dtype in sorted(set(retype.values())):
        reason = store.supports_dtype(dtype)
        if reason:
            raise UnsupportedError(f"{store.path}: cannot store {dtype}: {reason}")
    changes: list[TensorChange] = []
    selected = 0
    untouched = False
    patcher = (
        None
        if dry_run or out is None
        else store.patch(out, retype, overwrite or in_place, spec.compress)
    )
    try:
        for info, ops in work:
            align = next((op.align for op in ops if op.align is not None), None)
            blocks = _Blocks(store, info, block_elems, align)
            # Several blocks: the next one is read meanwhile, on the other core.
            read_ahead = info.size >= READ_AHEAD_ELEMS
            for k, op in enumerate(ops):
                pass_no = 0
                while op.passes > pass_no:
                    for where, block in ahead(blocks) if read_ahead else blocks:
                        y = block
                        for prev in ops[:k]:
                            y = prev.apply(where, y, count=False)
                        op.observe(pass_no, where, y)
                    if not op.end_pass(pass_no):
                        break
                    pass_no += 1
            out_dtype = ops[-1].out_dtype
            if patcher is not None:
                patcher.begin(info, out_dtype)
            before, after = RunningStats(count_zeros=False), RunningStats(count_zeros=False)
            n_changed = 0
            max_change = 0.0
            for where, block in ahead(blocks) if read_ahead else blocks:
                before_n = n_changed
                fused = ops[0].apply_summarized(where, block) if len(ops) == 1 else None
                if fused is not None:  # the transform and its summary in one pass
                    y = fused[0]
                    n_changed, max_change = _add_pair(
                        fused[1], block.size, before, after, n_changed, max_change
                    )
                else:
                    y = block
                    for op in ops:
                        y = op.apply(where, y)
                    n_changed, max_change = _summarize(
                        block, y, before, after, n_changed, max_change
                    )
                # The copy already holds the original bytes: a block that did not change
                # (same values, same dtype) needs no write.
                if patcher is not None and (n_changed > before_n or out_dtype != info.dtype):
                    patcher.write(info, where, y)
            stats_before, stats_after = before.result(), after.result()
            if not allow_nonfinite:
                _refuse_new_nonfinite(info, out_dtype, stats_before, stats_after)
            if n_changed or out_dtype != info.dtype:
                changes.append(
                    TensorChange(
                        info,
                        out_dtype,
                        stats_before,
                        stats_after,
                        n_changed,
                        max_change,
                        [op.figures() for op in ops],
                    )
                )
            selected += 1
        # (compressing is a change of its own: the file is rewritten)
        untouched = patcher is not None and not changes and in_place and not spec.compress
        if untouched:  # in place, and nothing changed: leave the source as it is
            assert patcher is not None and hasher is not None
            patcher.abort()
            hasher.cancel()
            patcher = hasher = None
        record = Provenance.now(
            command=" ".join(["weightcli", *command]),
            steps=[s.describe() for s in steps],
            source=store.path.name,
            source_digest=hasher.result() if hasher else None,
            changed=[c.info.name for c in changes],
            note=note,
        ).to_json()
        if patcher is not None:
            patcher.set_history([*store.meta.history, record])
            patcher.commit()
    except BaseException:
        if hasher is not None:
            hasher.cancel()
        if patcher is not None:
            patcher.abort()
        raise
    written = patcher.bytes_written if patcher is not None else 0
    visible = any(s.selection.include_optimizer for s in steps)
    sizes: tuple[int | None, int | None] = (None, None)
    resized = retype or spec.compress
    if resized and out is not None and not dry_run and not untouched and not is_url(out):
        with contextlib.suppress(OSError):
            sizes = (total_size(store.path), total_size(out))
    return TransformResult(
        source=store.path,
        output=None if dry_run or untouched else out,
        changes=changes,
        selected=selected,
        total_tensors=sum(1 for t in store.tensors() if visible or not t.optimizer),
        bytes_written=written,
        elapsed=time.perf_counter() - started,
        record=record,
        dry_run=dry_run,
        left_out=left_out(store, steps),
        size_before=sizes[0],
        size_after=sizes[1],
    )


def left_out(store: Store, steps: Sequence[Step]) -> list[str]:
    """Tensors a step's selection matches but the step leaves alone by default (``scale``:
    normalisation parameters), for the summary line."""
    return [t.name for t in store.tensors() if any(s.leaves_out(t) for s in steps)]


def _refuse_new_nonfinite(
    info: TensorInfo, dtype: str, before: TensorStats, after: TensorStats
) -> None:
    if after.nan <= before.nan and after.inf <= before.inf:
        return
    new = after.nonfinite - before.nonfinite
    was = f" (it had {before.nonfinite})" if before.nonfinite else ""
    raise UsageError.naming(
        f"{literal(info.name)}: the transform would create {new} NaN/Inf values{was}, "
        f"beyond the range of {dtype} (max |x| before: {before.abs_max:.4g}); nothing written "
        "(give {allow_nonfinite} to write them anyway)"
    )


# The summary (statistics before and after, changes) reads each block in slices of
# this many elements, so the three passes over a slice hit the cache.
SUMMARY_SLICE = 1 << 18


def _summarize(
    x: np.ndarray, y: np.ndarray, before: RunningStats, after: RunningStats, n: int, worst: float
) -> tuple[int, float]:
    fx, fy = x.reshape(-1), y.reshape(-1)
    fast = native.pair_f32(fx, fy) if y is not x else None
    if fast is not None:  # float32 both sides, no NaN/Inf: one fused pass
        return _add_pair(fast, fx.size, before, after, n, worst)
    if y is x:  # the steps left this block as it was: one set of statistics serves both
        part = RunningStats(count_zeros=before.count_zeros)
        part.update(fx)
        before.merge(part)
        after.merge(part)
        return n, worst
    for i in range(0, max(fx.size, 1), SUMMARY_SLICE):
        xs, ys = fx[i : i + SUMMARY_SLICE], fy[i : i + SUMMARY_SLICE]
        before.update(xs)
        after.update(ys)
        n, worst = _count_changes(xs, ys, n, worst)
    return n, worst


def _add_pair(
    pair: Any, size: int, before: RunningStats, after: RunningStats, n: int, worst: float
) -> tuple[int, float]:
    """Add ``native.pair_f32``'s summary of a block of ``size`` elements to the running
    figures (statistics before and after, changes, largest change)."""
    x_moments, y_moments, changed, top = pair
    before.add_moments(size, *x_moments)
    after.add_moments(size, *y_moments)
    return n + changed, max(worst, top)


def _count_changes(x: np.ndarray, y: np.ndarray, n: int, worst: float) -> tuple[int, float]:
    """Elements that changed and the largest finite |change|, accumulated over blocks."""
    if x.dtype.kind == "f" and x.dtype.itemsize >= 4 and x.dtype == y.dtype:
        d = np.subtract(y, x, out=_scratch(x.dtype, x.size))
        if d.size == 0:
            return n, worst
        np.abs(d, out=d)
        top = float(d.max())
        if math.isfinite(top):  # no NaN/Inf on either side (they would reach d)
            changed = np.not_equal(d, 0, out=_scratch(np.dtype(bool), d.size))
            return n + int(np.count_nonzero(changed)), max(worst, top)
    xw = x.astype(np.float64)
    yw = y.astype(np.float64)
    same = (xw == yw) | (np.isnan(xw) & np.isnan(yw))
    n += int(x.size - np.count_nonzero(same))
    both = np.isfinite(xw) & np.isfinite(yw)
    if both.any():
        worst = max(worst, float(np.abs(yw - xw)[both].max()))
    return n, worst


_SCRATCH = threading.local()


def _scratch(dtype: np.dtype, size: int) -> np.ndarray:
    """A reused buffer of ``size`` elements, one per thread and dtype (fresh pages for
    every block cost more than the arithmetic on them)."""
    bufs: dict[np.dtype, np.ndarray] = _SCRATCH.__dict__.setdefault("bufs", {})
    buf = bufs.get(dtype)
    if buf is None or buf.size < size:
        buf = bufs[dtype] = np.empty(max(size, SUMMARY_SLICE), dtype)
    return buf[:size]


def structural(
    store: Store,
    src: Path,
    out: Path,
    spec: OutputSpec,
    command: str,
    edit: Callable[[Patcher], list[dict[str, Any]]],
) -> None:
    """A structural edit of ``store`` into ``out`` (a config, training state, new
    tensors: ``freeze``, ``migrate``): ``edit`` changes the patcher and returns the
    history's steps; the history is recorded and the copy committed, or nothing is left."""
    spec.refuse("requantize", command=command.split(" ")[1] if " " in command else command)
    patcher = store.patch(out, {}, spec.force or spec.in_place, spec.compress)
    try:
        steps = edit(patcher)
        patcher.set_history([*store.meta.history, record(store, src, spec, command, steps)])
        patcher.commit()
    except BaseException:
        patcher.abort()
        raise


def record(
    store: Store, src: Path, spec: OutputSpec, command: str, steps: list[dict[str, Any]]
) -> dict[str, Any]:
    """The history entry of a structural edit or a rewrite of ``store`` (no tensor's
    values changed)."""
    return Provenance.now(
        command=command,
        steps=steps,
        source=src.name,
        source_digest=digest(store.local_copy(), spec.digest),
        changed=[],
        note=spec.note,
    ).to_json()
