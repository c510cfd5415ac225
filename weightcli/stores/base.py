"""The store interface: list a checkpoint's tensors, read them in blocks, patch a copy.

A store knows one container layout and nothing else. Commands work only through
this interface, so every format gets every command.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
import difflib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from weightcli.errors import OutputError, UnsupportedError, UsageError
from weightcli.stores import temps
from weightcli.stores.remote import forget_origins, is_url, stage
from weightcli.tensor import TensorInfo

# Largest block handed out at once, in elements (float32: 1 MiB). Bounds memory
# whatever the model size; large enough that per-call overhead stays negligible.
BLOCK_ELEMS = 256 * 1024


class Format(StrEnum):
    """The container layouts weightcli reads and writes (the ``format`` id in JSON)."""

    KERAS_H5 = "keras-h5"
    KERAS_H5_WEIGHTS = "keras-h5-weights"
    KERAS3_WEIGHTS = "keras3-weights-h5"
    KERAS3_SHARDED = "keras3-sharded-weights"
    KERAS_ARCHIVE = "keras-archive"
    KERAS_FOLDER = "keras-folder"
    HDF5 = "hdf5"
    SAVEDMODEL = "savedmodel"
    TF_CHECKPOINT = "tf-checkpoint"


@dataclass
class StoreMeta:
    """What the container says about itself, for the inspect header.

    The capability properties (``full_model``, ``weights_only``, ``has_graph``,
    ``checksums``) are what callers test, never the format id itself.
    """

    format: str  # a format id: a ``Format`` member, or the id a format module declares
    format_label: str
    writer: str | None = None
    model_class: str | None = None
    model_name: str | None = None
    has_config: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def full_model(self) -> bool:
        """Architecture and weights: Keras loads it as a model (``load_model``)."""
        return self.format in (Format.KERAS_H5, Format.KERAS_ARCHIVE, Format.KERAS_FOLDER)

    @property
    def legacy_full_model(self) -> bool:
        """A full model in Keras's legacy HDF5 layout (``model.save("m.h5")``: the config
        in the ``model_config`` attribute, weights under ``model_weights``, the training
        state beside them)."""
        return self.format == Format.KERAS_H5

    @property
    def weights_only(self) -> bool:
        """Keras weights without an architecture (``load_weights`` into a model)."""
        return self.format in (
            Format.KERAS_H5_WEIGHTS,
            Format.KERAS3_WEIGHTS,
            Format.KERAS3_SHARDED,
        )

    @property
    def has_graph(self) -> bool:
        """A TensorFlow graph that runs without Keras (a SavedModel)."""
        return self.format == Format.SAVEDMODEL

    @property
    def checksums(self) -> bool:
        """Every tensor carries a checksum that reading verifies."""
        return self.format in (Format.SAVEDMODEL, Format.TF_CHECKPOINT)

    @property
    def keras3_model(self) -> bool:
        """A Keras 3 model saved natively (``config.json`` beside ``model.weights.h5``):
        the layout Keras 3's own layers (its quantized ones among them) are written in."""
        return self.format in (Format.KERAS_ARCHIVE, Format.KERAS_FOLDER)

    @property
    def keras_layers(self) -> bool:
        """Keras layers can be rebuilt from it (alone or with an architecture file)."""
        return self.full_model or self.weights_only


_HISTORY_TEXT = ("tool", "version", "time", "command", "source", "source_sha256", "note")


def clean_history(parsed: Any) -> list[dict[str, Any]]:
    """A stored history as readers may trust it: a list of objects whose known fields
    have their types (text fields as text, ``changed`` a list of names). Anything else
    a damaged or hostile file holds is kept visible, never crashing a reader: an entry
    that is not an object becomes ``{"unreadable": <its JSON, cut>}``."""
    if not isinstance(parsed, list):
        return []
    out: list[dict[str, Any]] = []
    for entry in parsed:
        if not isinstance(entry, dict):
            out.append({"unreadable": json.dumps(entry)[:200]})
            continue
        clean = dict(entry)
        for key in _HISTORY_TEXT:
            value = clean.get(key)
            if value is not None and not isinstance(value, str):
                clean[key] = json.dumps(value)[:200]
        changed = clean.get("changed")
        if changed is not None and not (
            isinstance(changed, list) and all(isinstance(c, str) for c in changed)
        ):
            clean["changed"] = [str(c) for c in changed] if isinstance(changed, list) else []
        out.append(clean)
    return out


@dataclass(frozen=True)
class Provenance:
    """One history entry: what weightcli did to make a checkpoint (stored in the output)."""

    tool: str
    version: str
    time: str
    command: str
    steps: list[dict[str, Any]]
    source: str
    # The source's digest manifest (``weightcli.digest``); None: not taken (a dry run).
    # Histories written before 0.2 hold ``source_sha256`` (a hex string) instead.
    source_digest: dict[str, Any] | None
    changed: list[str]
    note: str | None = None  # why, in the user's words (--note)

    @classmethod
    def now(
        cls,
        command: str,
        steps: list[dict[str, Any]],
        source: str,
        source_digest: dict[str, Any] | None,
        changed: list[str],
        note: str | None = None,
    ) -> Provenance:
        """An entry made by this weightcli now (UTC, to the second)."""
        from weightcli.version import __version__

        return cls(
            tool="weightcli",
            version=__version__,
            time=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            command=command,
            steps=steps,
            source=source,
            source_digest=source_digest,
            changed=changed,
            note=note,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tool": self.tool,
            "version": self.version,
            "time": self.time,
            "command": self.command,
            "steps": self.steps,
            "source": self.source,
            "source_digest": self.source_digest,
            "changed": self.changed,
        }
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class Block:
    """A piece of a tensor: the sub-array at ``origin`` (an index per axis) of ``shape``.

    A block is whole along every axis after its split axis and one index wide before
    it, so its elements are one run of the tensor's C-order elements starting at
    flat index ``first``: on disk, one contiguous byte range.
    """

    origin: tuple[int, ...]
    shape: tuple[int, ...]
    first: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def index(self) -> tuple[slice, ...]:
        """The numpy/h5py index selecting this block (keeping every axis)."""
        return tuple(slice(o, o + n) for o, n in zip(self.origin, self.shape, strict=True))


def split(
    shape: tuple[int, ...], max_elems: int = BLOCK_ELEMS, align: tuple[int, int] | None = None
) -> Iterator[Block]:
    """Cover a tensor with blocks of at most ``max_elems`` elements, in storage order.

    The split axis is the first one whose trailing sub-array fits the budget; blocks
    take as many of its indices as fit. A (3, 3, 512, 512) conv kernel splits into
    nine (1, 1, 512, 512) blocks, a (2048, 1000) one into (262, 1000) row blocks. A
    scalar or an empty tensor is one block.

    ``align=(axis, m)``: no block cuts a run of ``m`` indices of ``axis`` (counted from
    0): a split along it takes a multiple of ``m`` indices, and a split past it (rows
    too long for the budget) moves to it, ``m`` indices at a time (``m`` times the
    budget at most). For operations on groups of ``m`` along an axis (N:M sparsity).
    """
    if not shape or 0 in shape:
        yield Block(tuple(0 for _ in shape), shape, 0)
        return
    k = 0
    inner = math.prod(shape[1:])
    while inner > max_elems:
        k += 1
        inner //= shape[k]
    step = max(1, max_elems // inner)
    if align is not None:
        axis, m = align[0] % len(shape), align[1]
        if k > axis:  # rows too long: split at the axis, m indices at a time
            k, inner, step = axis, math.prod(shape[axis + 1 :]), m
        elif k == axis:
            step = max(m, step // m * m)
    outer_shape = shape[:k]
    for outer_no, outer in enumerate(_indexes(outer_shape)):
        base = outer_no * shape[k] * inner
        for start in range(0, shape[k], step):
            stop = min(shape[k], start + step)
            yield Block(
                (*outer, start, *(0 for _ in shape[k + 1 :])),
                (*(1 for _ in outer_shape), stop - start, *shape[k + 1 :]),
                base + start * inner,
            )


def _indexes(shape: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """Every index of ``shape`` in C order, generated (never a list: a declared shape
    may be absurdly large, and only what is read may cost memory)."""
    if not shape:
        yield ()
        return
    for i in range(shape[0]):
        for rest in _indexes(shape[1:]):
            yield (i, *rest)


@dataclass(frozen=True)
class Affine:
    """``value = (codes - zero) * scale``, ``scale`` and ``zero`` running along ``axis``
    of the codes (one entry each: the whole tensor)."""

    scale: TensorInfo
    zero: tuple[int, ...]
    axis: int


class PatcherStateError(RuntimeError):
    """A patcher was called out of order (a bug in the caller, not a user error)."""


class Patcher(abc.ABC):
    """A copy of a store's container being patched.

    Writes go to a temporary location; ``commit`` renames it into place and
    ``abort`` removes it, so no half-written output survives a failure. Use as a
    context manager: leaving the block with an exception aborts.
    """

    def __init__(self) -> None:
        self._done = False
        self.overwrite = False  # replace an output that appeared meanwhile (--force)
        self._history_set = False
        self._begun: set[str] = set()

    def begin(self, info: TensorInfo, dtype: str) -> None:
        """Announce that ``info`` is rewritten, stored as ``dtype``."""
        self._expect_open("begin")
        if self._history_set:
            raise PatcherStateError("begin() after set_history(): the history closes the writes")
        self._begin(info, dtype)
        self._begun.add(info.path)

    def write(self, info: TensorInfo, block: Block, data: np.ndarray) -> None:
        """Write ``data``, the new values of ``block`` of ``info``."""
        self._expect_open("write")
        if info.path not in self._begun:
            raise PatcherStateError(f"write() of {info.name} before begin()")
        with self._writing():
            self._write(info, block, data)

    def set_history(self, history: list[dict[str, Any]]) -> None:
        """Record the provenance list in the output (once, after the last write)."""
        self._expect_open("set_history")
        if self._history_set:
            raise PatcherStateError("set_history() called twice")
        with self._writing():
            self._set_history(history)
        self._history_set = True

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed write (a full disk, a file size limit) is one clear error."""
        try:
            yield
        except OutputError:
            raise
        except OSError as exc:
            out = getattr(self, "out", "the output")
            raise OutputError(f"{out}: cannot write: {exc.strerror or exc}") from exc

    def create(self, path: str, data: np.ndarray) -> None:
        """Add a new tensor at ``path`` (a structural edit: formats with a layout for it)."""
        self._expect_open("create")
        if self._history_set:
            raise PatcherStateError("create() after set_history()")
        with self._writing():
            self._create(path, data)

    def set_config(self, config: dict[str, Any]) -> None:
        """Replace the stored model config (formats that store one as a member)."""
        self._expect_open("set_config")
        if self._history_set:
            raise PatcherStateError("set_config() after set_history()")
        with self._writing():
            self._set_config(config)

    def drop_training(self) -> list[str]:
        """Remove the stored training state (compile config, optimizer state) of a format
        that keeps it beside the model; what was removed."""
        self._expect_open("drop_training")
        if self._history_set:
            raise PatcherStateError("drop_training() after set_history()")
        with self._writing():
            return self._drop_training()

    def _drop_training(self) -> list[str]:
        raise UnsupportedError(
            f"{getattr(self, 'out', 'this output')}: its format stores no training state apart"
        )

    def _create(self, path: str, data: np.ndarray) -> None:
        raise UnsupportedError(
            f"{getattr(self, 'out', 'this output')}: its format cannot take new tensors"
        )

    def _set_config(self, config: dict[str, Any]) -> None:
        raise UnsupportedError(
            f"{getattr(self, 'out', 'this output')}: its format stores no model config to change"
        )

    def _expect_open(self, call: str) -> None:
        if self._done:
            raise PatcherStateError(f"{call}() on a patcher already committed or aborted")

    @property
    @abc.abstractmethod
    def bytes_written(self) -> int:
        """Bytes this patcher wrote itself (not those copied unchanged in the kernel)."""

    @abc.abstractmethod
    def _begin(self, info: TensorInfo, dtype: str) -> None: ...

    @abc.abstractmethod
    def _write(self, info: TensorInfo, block: Block, data: np.ndarray) -> None: ...

    @abc.abstractmethod
    def _set_history(self, history: list[dict[str, Any]]) -> None: ...

    @abc.abstractmethod
    def _commit(self) -> None: ...

    @abc.abstractmethod
    def _abort(self) -> None: ...

    def commit(self) -> None:
        """Move the finished output into place (after ``set_history``)."""
        if not self._done:
            if not self._history_set:
                raise PatcherStateError("commit() before set_history()")
            with self._writing():
                self._commit()
            self._done = True

    def abort(self) -> None:
        """Remove everything written so far; the output path is left as it was."""
        if not self._done:
            self._done = True
            self._abort()

    def __enter__(self) -> Patcher:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None or not self._done:
            self.abort()


def _open_for_lock(path: Path) -> int:
    """A descriptor a write lock can be taken on (a write lock needs one open for
    writing; a read-only file this process may not open so: no lock, -1 never)."""
    if path.is_dir():
        return os.open(path, os.O_RDONLY)
    try:
        return os.open(path, os.O_RDWR)
    except PermissionError:
        return os.open(path, os.O_RDONLY)


def _write_lock(fd: int, folder: bool = False) -> None:
    """An exclusive lock on ``fd``, without waiting: BlockingIOError when another process
    holds one. A file: an open-file-description lock (Linux ``F_OFD_SETLK``), independent
    of the ``flock`` locks HDF5 takes on the files it opens and of this process's other
    descriptors of the file; a folder (no HDF5 there): ``flock``. Where neither can be
    taken (no OFD locks, a file not open for writing), none is."""
    import fcntl
    import struct

    if folder:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    import errno

    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
        return
    cmd = getattr(fcntl, "F_OFD_SETLK", None)
    if cmd is None:
        return
    # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks), padding.
    request = struct.pack("hhqqixxxx", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    try:
        fcntl.fcntl(fd, cmd, request)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):  # held by another process
            raise BlockingIOError(exc.errno, exc.strerror) from None
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # no OFD locks
            raise


def fingerprint(path: Path) -> tuple[int, int, int, int]:
    """Which file ``path`` is, and as of when: device, inode, size, mtime (ns)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class StagedPatcher(Patcher):
    """A patcher of a local copy of a remote checkpoint (``inner``); ``cleanup`` runs
    when it ends, committed or not."""

    def __init__(self, inner: Patcher, cleanup: list[Callable[[], None]]) -> None:
        super().__init__()
        self.inner = inner
        self.cleanup = cleanup

    @property
    def bytes_written(self) -> int:
        return self.inner.bytes_written

    def _begin(self, info: TensorInfo, dtype: str) -> None:
        self.inner.begin(info, dtype)

    def _write(self, info: TensorInfo, block: Block, data: np.ndarray) -> None:
        self.inner.write(info, block, data)

    def _set_history(self, history: list[dict[str, Any]]) -> None:
        self.inner.set_history(history)

    def _create(self, path: str, data: np.ndarray) -> None:
        self.inner.create(path, data)

    def _set_config(self, config: dict[str, Any]) -> None:
        self.inner.set_config(config)

    def _drop_training(self) -> list[str]:
        return self.inner.drop_training()

    def _end(self, step: Callable[[], None]) -> None:
        try:
            step()
        finally:
            for f in self.cleanup:
                f()

    def _commit(self) -> None:
        self.inner.overwrite = self.overwrite
        self._end(self.inner.commit)

    def _abort(self) -> None:
        self._end(self.inner.abort)


class Store(abc.ABC):
    """A checkpoint opened for reading."""

    path: Path
    meta: StoreMeta

    @abc.abstractmethod
    def tensors(self) -> list[TensorInfo]:
        """Every tensor, model weights and optimizer state, in file order."""

    @abc.abstractmethod
    def read(self, info: TensorInfo, block: Block | None = None) -> np.ndarray:
        """One block of a tensor (all of it by default), in its stored dtype."""

    @property
    def target(self) -> Path:
        """The path that names this checkpoint for writing (a TF checkpoint: its prefix)."""
        return self.path

    def tensor(self, name: str) -> TensorInfo:
        """The tensor with canonical name ``name``; an error names the nearest ones."""
        tensors = self.tensors()
        for t in tensors:
            if t.name == name:
                return t
        names = [t.name for t in tensors]
        near = difflib.get_close_matches(name, names, n=3, cutoff=0.4) or names[:3]
        raise UsageError(
            f"{self.path}: no tensor named {name!r}"
            + (f"; nearest: {', '.join(near)}" if near else "")
        )

    def blocks(
        self,
        info: TensorInfo,
        max_elems: int = BLOCK_ELEMS,
        align: tuple[int, int] | None = None,
    ) -> Iterator[tuple[Block, np.ndarray]]:
        """(block, values) pairs covering the tensor, each at most ``max_elems`` elements
        (``align``: see ``split``)."""
        for block in split(info.shape, max_elems, align):
            yield block, self.read(info, block)

    def patch(
        self,
        out: Path,
        retype: dict[str, str] | None = None,
        overwrite: bool = False,
        compress: bool = False,
    ) -> Patcher:
        """A patcher writing a copy of this checkpoint to ``out``.

        ``retype`` maps tensor paths to the dtype they will be stored in, when a
        transform changes it. Without ``overwrite``, an ``out`` that exists when the
        patcher commits (another writer) is never replaced. A checkpoint in object
        storage is patched from a local copy (every unchanged byte is needed), removed
        when the patcher ends.
        """
        if compress and (reason := self.cannot_compress()):
            raise UnsupportedError(f"{self.path}: {reason}")
        if is_url(self.path):
            local = self.reopen(self.local_copy())
            try:
                inner = local.patch(out, retype, overwrite, compress)
            except BaseException:
                local.close()
                self.drop_local_copy()
                raise
            patcher: Patcher = StagedPatcher(inner, [local.close, self.drop_local_copy])
        else:
            patcher = (
                self._patch(out, retype or {}, compress=True)  # type: ignore[call-arg]
                if compress
                else self._patch(out, retype or {})
            )
            if os.path.realpath(out) == os.path.realpath(self.target):
                # In place: one writer at a time, and only over what this store read.
                patcher = StagedPatcher(patcher, [self._lock_in_place()])
        patcher.overwrite = overwrite
        return patcher

    # What the checkpoint's main file was when it was opened (set by the registry).
    opened_as: tuple[int, int, int, int] | None = None

    def _lock_file(self) -> Path:
        target = self.target
        index = target.with_name(target.name + ".index")
        return index if not target.exists() and index.exists() else target

    def _lock_in_place(self) -> Callable[[], None]:
        """Lock the checkpoint for an in-place write (``flock``, released by the returned
        function): a second writer is refused, not silently lost; and a checkpoint that
        changed since this store read it (another writer finished meanwhile) is refused."""
        path = self._lock_file()
        fd = _open_for_lock(path)
        try:
            _write_lock(fd, path.is_dir())
        except BlockingIOError:
            os.close(fd)
            raise OutputError(
                f"{self.target}: another weightcli is writing it in place; run again when it "
                "has finished"
            ) from None
        if self.opened_as is not None and fingerprint(path) != self.opened_as:
            os.close(fd)
            raise OutputError(
                f"{self.target}: changed while weightcli was reading it (another writer?); "
                "nothing written: run again"
            )

        def release() -> None:
            os.close(fd)  # closing the descriptor releases the lock

        return release

    def reopen(self, path: Path) -> Store:
        """The same format's store over another copy of this checkpoint."""
        return type(self)(path)  # type: ignore[call-arg]

    def local_copy(self) -> Path:
        """This checkpoint on this machine: its own path, or (in object storage) a copy
        downloaded once, kept until :meth:`drop_local_copy`."""
        if not is_url(self.path):
            return self.path
        staged: Path | None = getattr(self, "_staged", None)
        if staged is None:
            staged = stage(self.path, self.siblings())
            self._staged: Path | None = staged
        return staged

    def siblings(self) -> list[Path]:
        """Files beside ``path`` that belong to this checkpoint (a weights map's shards)."""
        return []

    def drop_local_copy(self) -> None:
        staged: Path | None = getattr(self, "_staged", None)
        if staged is not None:
            temps.remove(staged.parent)
            forget_origins(staged.parent)
            self._staged = None

    @abc.abstractmethod
    def _patch(self, out: Path, retype: dict[str, str]) -> Patcher:
        """The format's own patcher."""

    def supports_dtype(self, dtype: str) -> str | None:
        """None when the format can store ``dtype``, else the reason it cannot."""
        return None

    def affine(self, info: TensorInfo) -> Affine | None:
        """For integer codes that a format dequantizes as ``(codes - zero) * scale``
        along an axis (TensorFlow Lite's quantization): where the scale is (a tensor of
        this store, writable as any) and the zero points; None for any other tensor."""
        return None

    # -- a full Keras model's weights, as a legacy .h5 lists them (migrate, strip) ----------

    def keras_layers(self) -> list[tuple[str, list[tuple[str, str]]]] | None:
        """A full Keras model's weights grouped as a legacy full-model ``.h5`` lists
        them: each layer with weights and its (weight name, tensor path) in order; None
        when this store does not hold a model in a form that says so."""
        return None

    def keras_writer(self) -> str | None:
        """The Keras that wrote the model (``Keras 2.15.0``), where the store says."""
        return self.meta.writer

    def legacy_attrs(self) -> dict[str, Any]:
        """The file attributes of a legacy ``.h5`` made anew from this store's model:
        its writer's ``keras_version`` (and ``backend``, ``training_config`` where kept)."""
        version = (self.keras_writer() or "").removeprefix("Keras ").split(" ")[0]
        return {"keras_version": version} if version else {}

    def training_state(self) -> list[str]:
        """What this store keeps for training beside the model (the compile config, the
        optimizer's state): what a rewrite into another layout does not carry."""
        return ["optimizer"] if any(t.optimizer for t in self.tensors()) else []

    def stored_dtype(self, info: TensorInfo) -> np.dtype:
        """The numpy dtype a tensor is stored in (a copy keeps its bytes)."""
        from weightcli.dtypes import to_numpy

        return to_numpy(info.dtype)

    def cannot_compress(self) -> str | None:
        """None when ``patch(..., compress=True)`` works for this format (its ``_patch``
        takes ``compress``), else why not."""
        return f"{self.meta.format_label} has no compressed form weightcli writes"

    def check(self, info: TensorInfo) -> None:  # noqa: B027 - optional hook
        """Verify every stored copy of a tensor (checksums) where the format has any.

        ``blocks`` already verifies the copy it streams, so callers that read a
        tensor's data need this only for the other copies (``verify``).
        """

    def check_container(self) -> None:  # noqa: B027 - optional hook
        """Checks of the whole container that opening skipped because they read every
        byte (in object storage: a ``.keras`` member's CRC); ``verify`` asks for them."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
