"""Keras 3 ``.keras`` archives: a zip of ``metadata.json``, ``config.json`` and
``model.weights.h5``.

Reading opens the weights member through the zip (no extraction when it is
stored uncompressed, as Keras writes it). Patching copies every other member's
bytes unchanged, with its original zip metadata, and replaces only the weights
member with its patched copy.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import struct
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from weightcli.errors import CorruptError, InputError, UnsupportedError
from weightcli.stores import capped, h5util, temps
from weightcli.stores.links import refuse_links_out
from weightcli.stores.temps import TEMP_TAG, remove_stale_temps

try:  # zip's CRC-32, vectorised (~20 GB/s against zlib's ~3); the same function
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - the dependency is declared; a fallback all the same
    from zlib import crc32
from weightcli.stores.base import Block, Format, Patcher, StoreMeta
from weightcli.stores.detect import is_keras_archive
from weightcli.stores.hdf5 import H5Patcher, H5Store
from weightcli.stores.output import (
    publish,
    temp_beside,
    temp_dir_beside,
)
from weightcli.stores.remote import PreadFile, RangeFile, is_url, open_range
from weightcli.tensor import TensorInfo

WEIGHTS = "model.weights.h5"
# A compressed weights member is inflated into $TMPDIR up to these limits.
MAX_INFLATE_RATIO = 1000
MAX_INFLATED = 64 << 30
# config.json and metadata.json are parsed up to this size.
MAX_JSON_BYTES = 64 << 20
FORMAT = Format.KERAS_ARCHIVE
LABEL = "Keras archive (.keras)"  # Keras 3's format; tf.keras 2.13+ writes it too


class Window(PreadFile):
    """A read-only file over bytes [start, start + size) of another file, by pread.

    h5py reads the stored (uncompressed) weights member through this: zipfile's own
    member stream restarts from the member's beginning on every backward seek, which
    HDF5 makes constantly.
    """

    def __init__(self, path: Path, start: int, size: int, reader: RangeFile | None = None) -> None:
        super().__init__()
        self._reader = reader  # in object storage: ranges fetched through it
        self._fd = -1 if reader is not None else os.open(path, os.O_RDONLY)
        self.start = start
        self.size = size
        self._pos = 0

    def pread(self, n: int, at: int) -> bytes:
        """``n`` bytes at ``at`` of the window (fewer at its end)."""
        n = max(0, min(n, self.size - at))
        if self._reader is not None:
            return self._reader.pread(n, self.start + at)
        return os.pread(self._fd, n, self.start + at)

    def check_crc(self, expected: int, label: str) -> None:
        """The zip CRC-32 of the window's bytes (a damaged archive is refused, not laundered)."""
        crc = 0
        if self._reader is not None:  # in object storage: fetched in large ranges
            for at in range(self.start, self.start + self.size, REMOTE_CHUNK):
                n = min(REMOTE_CHUNK, self.start + self.size - at)
                data = self._reader.pread(n, at)
                if len(data) != n:
                    raise CorruptError(f"{label}: object ends at byte {at + len(data)}")
                crc = crc32(data, crc)
        else:
            for chunk in read_chunks(self._fd, self.start, self.size, label):
                crc = crc32(chunk, crc)
        if crc != expected:
            raise zipfile.BadZipFile(f"Bad CRC-32 for {label}")

    def close(self) -> None:
        if not self.closed and self._fd >= 0:
            os.close(self._fd)
        super().close()


COPY_CHUNK = 1 << 20
REMOTE_CHUNK = 8 << 20  # bytes per ranged read when a remote member is checked whole


def read_chunks(fd: int, start: int, size: int, label: str = "") -> Iterator[memoryview]:
    """Bytes [start, start + size) of ``fd`` in chunks of one reused buffer (a fresh
    buffer per chunk costs a page fault per page: more than the copying). Each chunk is
    valid until the next one is read."""
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    pos = 0
    while pos < size:
        n = os.preadv(fd, [view[: min(COPY_CHUNK, size - pos)]], start + pos)
        if n == 0:
            raise CorruptError(f"{label or 'the file'}: ends at byte {start + pos}: data missing")
        yield view[:n]
        pos += n


def member_data_offset(path: Path, info: zipfile.ZipInfo, f: Any = None) -> int:
    """Where a member's bytes start: after its local header, file name and extra field."""
    with path.open("rb") if f is None else contextlib.nullcontext(f) as f:
        f.seek(info.header_offset)
        header = f.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise CorruptError(f"{path}: damaged zip local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return int(info.header_offset + 30 + name_len + extra_len)


INFLATE_INPUT = 64 << 10  # compressed bytes read at a time


class Inflated(io.RawIOBase):
    """A zip member's bytes, stored or deflated, never more than its declared size.

    zipfile inflates as much as the compressed bytes give in one call (bz2 and lzma
    always, deflate on ``read()``), so a member whose declared size lies costs
    gigabytes. Here each call yields at most what was asked for, a stream that goes
    on past the declared size or ends before it is refused, and the CRC is checked at
    the end. Other methods (bz2, lzma: Keras writes neither) are refused by the caller.
    """

    def __init__(self, raw: Window, info: zipfile.ZipInfo, label: str) -> None:
        super().__init__()
        self.raw, self.info, self.label = raw, info, label
        self.z = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
        self.consumed = 0  # compressed bytes read
        self.produced = 0
        self.crc = 0
        self.tail = b""
        self.checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        want = min(len(b), self.info.file_size - self.produced)
        if want <= 0:
            self._check_end()
            return 0
        data = self._next(want)
        n = len(data)
        b[:n] = data
        self.produced += n
        self.crc = crc32(data, self.crc)
        return n

    def _input(self) -> bytes:
        data = self.raw.pread(INFLATE_INPUT, self.consumed)
        self.consumed += len(data)
        return data

    def _next(self, want: int) -> bytes:
        if self.z is None:
            data = self.raw.pread(want, self.consumed)
            self.consumed += len(data)
            if not data:
                raise CorruptError(f"{self.label}: ends before its declared size")
            return data
        while True:
            if not self.tail:
                self.tail = self._input()
                if not self.tail:
                    raise CorruptError(f"{self.label}: ends before its declared size")
            try:
                data = self.z.decompress(self.tail, want)
            except zlib.error as exc:
                raise CorruptError(f"{self.label}: damaged deflate stream: {exc}") from None
            self.tail = self.z.unconsumed_tail
            if data:
                return data
            if self.z.eof:
                raise CorruptError(f"{self.label}: ends before its declared size")

    def _check_end(self) -> None:
        if self.checked:
            return
        self.checked = True
        if self.z is not None and not self.z.eof:
            try:
                more = self.z.decompress(self.tail or self._input(), 1)
            except zlib.error as exc:
                raise CorruptError(f"{self.label}: damaged deflate stream: {exc}") from None
            if more:
                raise CorruptError(
                    f"{self.label}: holds more than the {self.info.file_size} bytes its zip "
                    "entry declares: refused"
                )
        if self.crc != self.info.CRC:
            raise CorruptError(f"{self.label}: bad CRC-32 (damaged archive member)")

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
        super().close()


class ArchiveStore(H5Store):
    """A ``.keras`` archive, read through its ``model.weights.h5`` member."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # In object storage: the central directory and the members fetched by range.
        self._reader: RangeFile | None = open_range(path) if is_url(path) else None
        try:
            self._zip = zipfile.ZipFile(self._reader or path)
        except (zipfile.BadZipFile, OSError) as exc:
            if self._reader is not None:
                self._reader.close()
            raise CorruptError(f"{path}: damaged zip archive: {exc}") from exc
        if not is_keras_archive(self._zip):
            self._zip.close()
            raise InputError(
                f"{path}: a zip file, but not a Keras archive (no config.json and {WEIGHTS})"
            )
        names = self._zip.namelist()
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            self._zip.close()
            raise CorruptError(
                f"{path}: holds two members named {twice[0]!r} (readers disagree on which "
                "counts): refused"
            )
        try:
            config = self._json("config.json")
            metadata = (
                self._json("metadata.json") if "metadata.json" in self._zip.namelist() else {}
            )
        except BaseException:
            self._zip.close()
            raise
        self._extracted: Path | None = None
        self._window: Window | None = None
        # A stored local member's CRC-32, checked once before its data is first read
        # or copied (``_check_weights_crc``); None: checked, or checked otherwise.
        self._crc_unchecked: int | None = None
        self._crc_lock = threading.Lock()
        member = self._zip.getinfo(WEIGHTS)
        try:
            if member.compress_type == zipfile.ZIP_STORED:
                if member.file_size != member.compress_size:
                    raise zipfile.BadZipFile(
                        f"a stored member of {member.compress_size} bytes declares {member.file_size}"
                    )
                start = member_data_offset(path, member, self._reader)
                src: Any = Window(path, start, member.file_size, self._reader)
                self._window = src
                if member.flag_bits & 0x1:
                    raise RuntimeError("it is encrypted")
                if self._reader is None:  # in object storage: by verify (check_container)
                    self._crc_unchecked = member.CRC
            else:
                src = str(self._extract(member))
            super().__init__(path, src=src, config=config, label=f"{path}:{WEIGHTS}")
            if self._reader is not None and self._window is not None:
                self._raw = self._reader, self._window.start, self._window.size
        except (RuntimeError, NotImplementedError) as exc:  # encrypted, unknown method
            self.close()
            raise UnsupportedError(f"{path}: cannot read {WEIGHTS}: {exc}") from exc
        except zipfile.BadZipFile as exc:
            self.close()
            raise CorruptError(f"{path}: damaged archive member {WEIGHTS}: {exc}") from exc
        except OSError as exc:
            self.close()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise InputError(
                    f"{path}: no room to inflate {WEIGHTS} in {tempfile.gettempdir()}: "
                    f"{exc.strerror}"
                ) from exc
            raise CorruptError(f"{path}: damaged archive member {WEIGHTS}: {exc}") from exc
        except BaseException:
            self.close()
            raise
        self.kind = FORMAT
        version = metadata.get("keras_version")
        self.meta = StoreMeta(
            format=FORMAT,
            format_label=LABEL,
            writer=f"Keras {version}" if version else None,
            model_class=config.get("class_name"),
            model_name=(config.get("config") or {}).get("name"),
            has_config=True,
            history=self.meta.history,
            extra={"saved": metadata.get("date_saved")} if metadata.get("date_saved") else {},
        )

    def _json(self, name: str) -> dict[str, Any]:
        """A JSON member, size-capped, CRC-checked (by zipfile), and an object."""
        info = self._zip.getinfo(name)
        if info.file_size > MAX_JSON_BYTES:
            raise CorruptError(
                f"{self.path}: {name} is {info.file_size} bytes (limit {MAX_JSON_BYTES >> 20} MiB)"
            )
        try:
            with self.open_member(info) as f:
                value = capped.parse_json(f.read(), f"{self.path}: {name}")
        except (RuntimeError, NotImplementedError) as exc:
            raise UnsupportedError(f"{self.path}: cannot read {name}: {exc}") from exc
        except (ValueError, zipfile.BadZipFile, OSError) as exc:
            raise CorruptError(f"{self.path}: unreadable {name}: {exc}") from exc
        if not isinstance(value, dict):
            raise CorruptError(f"{self.path}: {name} holds {type(value).__name__}, not an object")
        return value

    def _extract(self, member: zipfile.ZipInfo) -> Path:
        """A compressed weights member, inflated into $TMPDIR (removed on close, and by
        a later run if this process is killed); at most MAX_INFLATE_RATIO times its
        compressed size and MAX_INFLATED bytes (a zip bomb is refused)."""
        if member.file_size > max(MAX_INFLATE_RATIO * member.compress_size, 1 << 20) or (
            member.file_size > MAX_INFLATED
        ):
            raise CorruptError(
                f"{self.path}: {WEIGHTS} inflates from {member.compress_size} to "
                f"{member.file_size} bytes: refused (limits: {MAX_INFLATE_RATIO}x, "
                f"{MAX_INFLATED >> 30} GiB)"
            )
        tmpdir = Path(tempfile.gettempdir())
        remove_stale_temps(tmpdir, "")
        self._extracted = temps.make_file(None, f".weights.{TEMP_TAG}{os.getpid()}.", ".h5.tmp")
        written = 0
        with open(self._extracted, "wb") as out, self.open_member(member) as inp:
            while chunk := inp.read(1 << 20):
                written += len(chunk)
                if written > member.file_size:
                    raise CorruptError(f"{self.path}: {WEIGHTS} is longer than its zip entry says")
                out.write(chunk)
        return self._extracted

    def check_container(self) -> None:
        """The weights member's CRC (in object storage too, where reading data skips
        it: it would fetch the member whole)."""
        if self._reader is not None and self._window is not None:
            self._crc_unchecked = self._zip.getinfo(WEIGHTS).CRC
        self._check_weights_crc()

    def _check_weights_crc(self) -> None:
        """A stored member's CRC-32, once, before its data is first read or copied: a
        listing reads only HDF5's metadata, so opening does not read the member whole
        (0.2 s a GB); a damaged member is refused before any figure or output."""
        with self._crc_lock:
            if self._crc_unchecked is None or self._window is None:
                return
            label = f"{self.path}: {WEIGHTS}"
            try:
                self._window.check_crc(self._crc_unchecked, label)
            except zipfile.BadZipFile as exc:
                raise CorruptError(f"{self.path}: damaged archive member {WEIGHTS}: {exc}") from exc
            except OSError as exc:
                raise CorruptError(f"{label}: cannot read it: {exc.strerror or exc}") from exc
            self._crc_unchecked = None

    def read(self, info: TensorInfo, block: Block | None = None) -> np.ndarray:
        self._check_weights_crc()
        return super().read(info, block)

    @property
    def zip(self) -> zipfile.ZipFile:
        """The open archive (read-only)."""
        return self._zip

    def open_member(self, info: zipfile.ZipInfo) -> io.BufferedReader:
        """A member's bytes, decompressed in bounded steps up to its declared size
        (``Inflated``); encrypted members and methods Keras never writes are refused."""
        label = f"{self.path}: {info.filename}"
        if info.flag_bits & 0x1:
            raise UnsupportedError(f"{label}: encrypted: refused")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise UnsupportedError(
                f"{label}: compressed with zip method {info.compress_type}; Keras stores or "
                "deflates members: refused"
            )
        start = member_data_offset(self.path, info, self._reader)
        window = Window(self.path, start, info.compress_size, self._reader)
        return io.BufferedReader(Inflated(window, info, label), 1 << 20)

    def copy_source_to(self, dest: Path) -> None:
        # (Inflated checks the member's CRC-32 as it copies: no pass of its own first.)
        with self.open_member(self._zip.getinfo(WEIGHTS)) as inp, open(dest, "wb") as out:
            shutil.copyfileobj(inp, out, 1 << 20)

    def source_region(self) -> tuple[Path, int, int] | None:
        if self._window is not None:  # stored: the member's bytes, as they are in the zip
            return self.local_copy(), self._window.start, self._window.size
        if self._extracted is not None:
            return self._extracted, 0, self._extracted.stat().st_size
        return None

    def supports_dtype(self, dtype: str) -> str | None:
        return None

    def _patch(self, out: Path, retype: dict[str, str], compress: bool = False) -> Patcher:
        self._check_weights_crc()  # the patch copies the member's bytes it does not change
        return ArchivePatcher(self, out, retype, compress)

    def close(self) -> None:
        try:
            if getattr(self, "_file", None) is not None:
                super().close()
        finally:
            self._zip.close()
            if self._window is not None:
                self._window.close()
            if self._reader is not None:
                self._reader.close()
            if self._extracted is not None:
                temps.remove(self._extracted)


class _WeightsMemberPatcher(Patcher):
    """A patcher whose tensors live in one ``model.weights.h5`` (``inner``); subclasses
    say where the rest of the model goes."""

    inner: H5Patcher

    def _begin(self, info: TensorInfo, dtype: str) -> None:
        self.inner.begin(info, dtype)

    def _write(self, info: TensorInfo, block: Block, data: Any) -> None:
        self.inner.write(info, block, data)

    def _set_history(self, history: list[dict[str, Any]]) -> None:
        self.inner.set_history(history)

    def _create(self, path: str, data: Any) -> None:
        self.inner.create(path, data)


# The weights member's bytes start at a power of two (at least this) in a written
# archive: a place HDF5 looks for a superblock after a "user block" (here, the members
# before it and its own local header), so h5py patches the member inside the new
# archive itself and every byte of it is written once.
MIN_DATA_AT = 4096
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ALIGNMENT_EXTRA = 0xD935  # the zip extra field that pads a member to an alignment (zipalign)
MAX_EXTRA = 0xFFFF


class ArchivePatcher(_WeightsMemberPatcher):
    """Writes a new archive beside OUT, members in their order with their zip metadata
    (``config.json`` replaced when the config changes).

    The weights member is patched inside the new archive: its HDF5 bytes are placed at
    ``data_at`` (a power of two, so h5py finds them after a user block), patched there,
    and the members before it, its local header (padded to end at ``data_at``), the
    members after it and the central directory are written around it at commit.
    A compressed weights member (kept compressed), one whose HDF5 superblock is not at
    its start, or members before it that outgrew the room left for them, take the
    other route: the member patched in a temporary ``.h5``, copied into a new archive.
    """

    def __init__(
        self, store: ArchiveStore, out: Path, retype: dict[str, str], compress: bool = False
    ) -> None:
        super().__init__()
        self.store = store
        self.out = out
        self.compress = compress  # the weights member deflated (the HDF5 inside as it is)
        self._zip_bytes = 0
        self.config_bytes: bytes | None = None
        self.zip_tmp = temp_beside(out)
        stored = store.zip.getinfo(WEIGHTS).compress_type == zipfile.ZIP_STORED
        in_place = stored and _starts_hdf5(store) and not compress
        self.data_at = _data_offset(store) if in_place else 0
        h5_tmp = self.zip_tmp if self.data_at else temp_beside(out, ".h5")
        try:
            self.inner = H5Patcher(store, out, retype, tmp=h5_tmp, tmp_base=self.data_at)
        except BaseException:
            self.zip_tmp.unlink(missing_ok=True)
            h5_tmp.unlink(missing_ok=True)
            raise

    @property
    def bytes_written(self) -> int:
        # Every byte but the weights member's unchanged ones (kernel-copied) is written.
        return self._zip_bytes + self.inner.bytes_written

    def _set_config(self, config: dict[str, Any]) -> None:
        self.config_bytes = json.dumps(config).encode()

    def _copy_member(self, dst: zipfile.ZipFile, member: zipfile.ZipInfo) -> None:
        """One member of the source archive (not the weights), with its zip metadata."""
        info = _like(member)
        config = self.config_bytes if member.filename == "config.json" else None
        size = member.file_size if config is None else len(config)
        with dst.open(info, "w", force_zip64=size > zipfile.ZIP64_LIMIT) as out:
            if config is not None:
                out.write(config)
            else:
                with self.store.open_member(member) as inp:
                    shutil.copyfileobj(inp, out, 1 << 20)

    def _commit(self) -> None:
        self.inner.close_file()
        if not self.data_at:
            self._write_anew(self.inner.tmp, 0)
            self.inner.tmp.unlink(missing_ok=True)
        elif not self._write_around():  # the members before outgrew their room
            weights = self.zip_tmp
            self.zip_tmp = temp_beside(self.out)
            try:
                self._write_anew(weights, self.data_at)
            finally:
                weights.unlink(missing_ok=True)
        publish(self.zip_tmp, self.out, self.overwrite)

    def _write_anew(self, weights: Path, weights_at: int) -> None:
        """A new archive in ``zip_tmp`` (existing, empty), the patched weights copied in
        from ``weights`` (the HDF5 file from byte ``weights_at``)."""
        # Opened without truncating (the temporary exists, empty): ext4 flushes a file
        # truncated and rewritten when it is closed, which would cost a writeback here.
        with open(self.zip_tmp, "r+b") as fp, zipfile.ZipFile(fp, "w") as dst:
            for member in self.store.zip.infolist():
                if member.filename != WEIGHTS:
                    self._copy_member(dst, member)
                    continue
                info = _like(member)
                if self.compress:
                    info.compress_type = zipfile.ZIP_DEFLATED
                zip64 = os.stat(weights).st_size - weights_at > zipfile.ZIP64_LIMIT
                with dst.open(info, "w", force_zip64=zip64) as out:
                    fd = os.open(weights, os.O_RDONLY)
                    try:
                        size = os.fstat(fd).st_size - weights_at
                        for chunk in read_chunks(fd, weights_at, size, str(weights)):
                            out.write(chunk)
                    finally:
                        os.close(fd)
        self._zip_bytes = self.zip_tmp.stat().st_size

    def _write_around(self) -> bool:
        """Complete the archive around the weights patched at ``data_at``: the members
        before them from byte 0, their local header ending at ``data_at``, the members
        after them and the central directory after their end. False (the archive left
        incomplete) when the members before do not fit below ``data_at``."""
        data_at = self.data_at
        members = self.store.zip.infolist()
        i = next(k for k, m in enumerate(members) if m.filename == WEIGHTS)
        fd = os.open(self.zip_tmp, os.O_RDWR)
        try:
            end = os.fstat(fd).st_size
            size = end - data_at
            info = _like(members[i])
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = info.compress_size = size
            with os.fdopen(os.dup(fd), "r+b") as fp:
                dst = zipfile.ZipFile(fp, "w")  # from byte 0
                complete = False
                try:
                    for member in members[:i]:
                        self._copy_member(dst, member)
                    free = fp.tell()
                    header_at = _header_offset(info, data_at, free)
                    if header_at is None:
                        return False
                    crc = 0
                    for chunk in read_chunks(fd, data_at, size, str(self.zip_tmp)):
                        crc = crc32(chunk, crc)
                    info.CRC = crc
                    info.header_offset = header_at
                    os.pwrite(fd, _padded_header(info, data_at - header_at), header_at)
                    dst.filelist.append(info)  # the weights, in their place
                    dst.NameToInfo[WEIGHTS] = info
                    fp.seek(end)
                    dst.start_dir = end
                    for member in members[i + 1 :]:
                        self._copy_member(dst, member)
                    complete = True
                finally:
                    if not complete:  # no central directory for an incomplete archive
                        dst._didModify = False  # type: ignore[attr-defined]  # noqa: SLF001
                    dst.close()
            # written here: the members before, the header, the members after, the directory
            self._zip_bytes = free + (data_at - header_at) + os.fstat(fd).st_size - end
        finally:
            os.close(fd)
        return True

    def _abort(self) -> None:
        try:
            self.inner.abort()
        finally:
            self.zip_tmp.unlink(missing_ok=True)


def _data_offset(store: ArchiveStore) -> int:
    """Where the weights' bytes go: the first power of two (>= MIN_DATA_AT) past the
    members before them and the weights' local header, with some room for a config
    rewritten longer (or a member compressed a little worse)."""
    need = 30 + len(WEIGHTS) + 20 + 6
    for member in store.zip.infolist():
        if member.filename == WEIGHTS:
            break
        need += 30 + len(member.filename.encode()) + len(member.extra) + 20 + member.file_size
        if member.compress_type != zipfile.ZIP_STORED:
            need += 1024 + member.file_size // 100  # deflate's worst case, and more
        if member.filename == "config.json":
            need += 1024 + member.file_size // 8
    at = MIN_DATA_AT
    while at < need:
        at *= 2
    return at


def _header_offset(info: zipfile.ZipInfo, data_at: int, free: int) -> int | None:
    """Where the weights' local header starts so that it ends at ``data_at``: right
    after the members before it (``free``), its extra field padding the rest (no gap
    between members: streaming zip readers walk the local headers). None when that
    does not fit: the members before outgrew their room, or the padding would exceed
    what an extra field holds."""
    fixed = 30 + len(info.filename.encode()) + (20 if info.file_size > zipfile.ZIP64_LIMIT else 0)
    room = data_at - free - fixed
    if not 6 <= room <= MAX_EXTRA:
        return None
    return free


def _starts_hdf5(store: ArchiveStore) -> bool:
    region = store.source_region()
    if region is None:
        return False
    path, start, size = region
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE


def _like(member: zipfile.ZipInfo) -> zipfile.ZipInfo:
    """A new entry with ``member``'s name and zip metadata."""
    info = zipfile.ZipInfo(member.filename, date_time=member.date_time)
    info.compress_type = member.compress_type
    info.external_attr = member.external_attr
    info.create_system = member.create_system
    info.comment = member.comment
    info.extra = member.extra
    return info


def _padded_header(info: zipfile.ZipInfo, length: int) -> bytes:
    """``info``'s local header, ``length`` bytes long: its extra field is an alignment
    record padding it (the central directory keeps ``info.extra``)."""
    zip64 = info.file_size > zipfile.ZIP64_LIMIT
    extra = info.extra
    room = length - 30 - len(info.filename.encode()) - (20 if zip64 else 0)
    info.extra = struct.pack("<HHH", ALIGNMENT_EXTRA, room - 4, 4096) + bytes(room - 6)
    try:
        header = info.FileHeader(zip64)
    finally:
        info.extra = extra
    assert len(header) == length
    return header


FOLDER_LABEL = "Keras 3 model folder (unzipped .keras)"


class FolderStore(H5Store):
    """An unzipped Keras model (``keras.saving.save_model(m, dir, zipped=False)``): the
    members of a ``.keras`` archive in a folder, read through ``model.weights.h5``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        refuse_links_out(path)  # its files are read, and copied into outputs
        config = _json_member(path, "config.json")
        metadata = _json_member(path, "metadata.json") if (path / "metadata.json").is_file() else {}
        super().__init__(path, src=path / WEIGHTS, config=config, label=f"{path}/{WEIGHTS}")
        self.kind = Format.KERAS_FOLDER
        version = metadata.get("keras_version")
        self.meta = StoreMeta(
            format=Format.KERAS_FOLDER,
            format_label=FOLDER_LABEL,
            writer=f"Keras {version}" if version else None,
            model_class=config.get("class_name"),
            model_name=(config.get("config") or {}).get("name"),
            has_config=True,
            history=self.meta.history,
            extra={"saved": metadata.get("date_saved")} if metadata.get("date_saved") else {},
        )

    def source_region(self) -> tuple[Path, int, int] | None:
        weights = self.local_copy() / WEIGHTS
        return weights, 0, weights.stat().st_size

    def copy_source_to(self, dest: Path) -> None:
        shutil.copyfile(self.local_copy() / WEIGHTS, dest)

    def _patch(self, out: Path, retype: dict[str, str], compress: bool = False) -> Patcher:
        return FolderPatcher(self, out, retype, compress)


def _json_member(folder: Path, name: str) -> dict[str, Any]:
    return capped.read_json_object(folder / name, MAX_JSON_BYTES, name)


class FolderPatcher(_WeightsMemberPatcher):
    """A copy of the model folder (every other file as it is, links as links) in which
    ``model.weights.h5`` is patched; moved into place whole."""

    def __init__(
        self, store: FolderStore, out: Path, retype: dict[str, str], compress: bool = False
    ) -> None:
        super().__init__()
        self.store = store
        self.out = out
        self.tmp = temp_dir_beside(out)
        self.root = self.tmp / "model"
        try:
            shutil.copytree(
                store.path,
                self.root,
                symlinks=True,
                ignore=lambda d, names: [WEIGHTS] if Path(d) == store.path else [],
            )
            weights = self.root / WEIGHTS
            weights.touch()
            self.inner = H5Patcher(store, out, retype, tmp=weights, compress=compress)
        except BaseException:
            temps.remove(self.tmp)
            raise

    @property
    def bytes_written(self) -> int:
        return self.inner.bytes_written

    def _set_config(self, config: dict[str, Any]) -> None:
        (self.root / "config.json").write_text(json.dumps(config))

    def _commit(self) -> None:
        self.inner.close_file()
        publish(self.root, self.out, self.overwrite)
        temps.remove(self.tmp)

    def _abort(self) -> None:
        try:
            self.inner.abort()
        finally:
            temps.remove(self.tmp)


# -- a Keras 3 archive written anew (``migrate`` of a legacy .h5 to .keras) ----------------


def write_new_archive(
    out: Path,
    config: dict[str, Any],
    metadata: dict[str, Any],
    weights: list[tuple[str, Any, tuple[int, ...], Iterator[tuple[Block, Any]]]],
    names: dict[str, str],
    history: list[dict[str, Any]],
    overwrite: bool,
) -> int:
    """A ``.keras`` archive made anew, as Keras's ``saving_lib`` lays one out:
    ``metadata.json``, ``config.json`` and ``model.weights.h5`` (stored, not deflated),
    each weight (dataset path, dtype, shape, its blocks) streamed block by block into
    its dataset, each object's ``vars`` group named (``names``: its path -> its name),
    weightcli's history on the weights file. Published atomically; the
    bytes written."""
    import h5py

    tmp = temp_beside(out)
    inner = temp_beside(out)
    try:
        with h5py.File(inner, "w") as f:
            f.create_group("vars")  # the model's own variables (none)
            for path, name in names.items():
                f.require_group(f"{path}/vars").attrs["name"] = name
            for path, dtype, shape, blocks in weights:
                h5util.write_streamed(f, path, dtype, shape, blocks)
            f.attrs[h5util.HISTORY_ATTR] = json.dumps(history)
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            z.writestr("metadata.json", json.dumps(metadata))
            z.writestr("config.json", json.dumps(config))
            with open(inner, "rb") as src, z.open(WEIGHTS, "w", force_zip64=True) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        size = tmp.stat().st_size
        publish(tmp, out, overwrite)
    except BaseException:
        temps.remove(tmp)
        raise
    finally:
        temps.remove(inner)
    return size
