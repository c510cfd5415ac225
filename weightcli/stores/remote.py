"""Checkpoints in object storage: fsspec URLs (``s3://``, ``gs://``, ``memory://``, ...).

A URL becomes a :class:`RemotePath`: a path (name, suffix, parent, ``/``) whose file
operations go to the URL's fsspec filesystem. Stores read remote files through
:class:`RangeFile`, which fetches byte ranges (small reads through a bounded cache of
aligned blocks, large ones exactly as asked), so reading the metadata of a large file
fetches only its metadata. Every byte fetched is counted (:func:`fetched`).

Outputs to a URL are built locally (a temporary folder) and uploaded when complete
(:func:`upload`): an object appears at OUT only once it is whole.

Needs the ``remote`` extra (``pip install 'weightcli[remote]'``): fsspec, s3fs, gcsfs.
Credentials are found the way those libraries find them (for S3: ``AWS_*`` variables,
``AWS_ENDPOINT_URL`` for an S3-compatible server, ~/.aws); ``--storage-option KEY=VALUE``
(``WEIGHTCLI_STORAGE_OPTIONS``, JSON) passes anything else to the filesystem.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import stat as stat_mod
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path, PosixPath
from typing import Any

from weightcli.errors import InputError, OutputError, UsageError, literal
from weightcli.stores import temps
from weightcli.stores.s3parts import Origin

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
OPTIONS_ENV = "WEIGHTCLI_STORAGE_OPTIONS"

# Reads smaller than this go through a cache of aligned blocks of this size (shared by
# every open file of the process: detecting a format and reading it open an object
# several times); larger reads fetch exactly their range.
BLOCK = 64 << 10
CACHED_BLOCKS = 128  # 8 MiB at most

_fetched = 0
_lock = threading.Lock()
_filesystems: dict[str, Any] = {}
_infos: dict[str, dict[str, Any] | None] = {}
_blocks: OrderedDict[tuple[str, int], bytes] = OrderedDict()
_origins: dict[str, Origin] = {}  # local download -> the object it came from
S3 = ("s3", "s3a")


def is_url(value: object) -> bool:
    return isinstance(value, (str, RemotePath)) and (
        isinstance(value, RemotePath) or bool(URL.match(value)) and not value.startswith("file://")
    )


def as_path(value: str | os.PathLike[str]) -> Path:
    """A local Path, or a :class:`RemotePath` for a URL (``file://`` is local)."""
    if isinstance(value, Path):
        return value
    text = os.fspath(value)
    if text.startswith("file://"):
        return Path(text[len("file://") :])
    if URL.match(text):
        return RemotePath(text)
    return Path(text)


def forget() -> None:
    """Drop the filesystems and object information cached by this process (after the
    environment or the storage options changed)."""
    _filesystems.clear()
    _infos.clear()
    with _lock:
        _blocks.clear()


# A forked worker makes its own connections (s3fs's clients are not fork-safe).
os.register_at_fork(after_in_child=forget)


def fetched() -> int:
    """Bytes fetched from object storage by this process so far."""
    return _fetched


def _count(n: int) -> None:
    global _fetched
    with _lock:
        _fetched += n


def storage_options() -> dict[str, Any]:
    raw = os.environ.get(OPTIONS_ENV)
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except ValueError as exc:
        raise UsageError(f"{OPTIONS_ENV} is not JSON: {exc}") from exc
    if not isinstance(options, dict):
        raise UsageError(f"{OPTIONS_ENV} must be a JSON object")
    return options


def parse_storage_option(spec: str) -> tuple[list[str], Any]:
    """``KEY=VALUE`` (dotted keys nest: ``client_kwargs.region_name=eu-west-1``); VALUE
    is JSON when it parses as JSON (``anon=true``, ``default_block_size=1048576``)."""
    key, sep, value = spec.partition("=")
    if not sep or not key:
        raise UsageError.naming(f"{{storage_option}} takes KEY=VALUE, got {literal(repr(spec))}")
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    return key.split("."), parsed


def set_storage_options(specs: tuple[str, ...]) -> None:
    """Record ``--storage-option``s for this process and its workers (environment)."""
    options = storage_options()
    for spec in specs:
        keys, value = parse_storage_option(spec)
        node = options
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    os.environ[OPTIONS_ENV] = json.dumps(options)
    forget()


def filesystem(protocol: str) -> Any:
    """The fsspec filesystem of ``protocol`` (one per process), with the storage options."""
    fs = _filesystems.get(protocol)
    if fs is not None:
        return fs
    try:
        import fsspec
    except ImportError as exc:
        raise UsageError(
            f"{protocol}:// paths need fsspec: pip install 'weightcli[remote]'"
        ) from exc
    options = storage_options()
    if protocol in S3:
        options = _s3_deadlines(options)
    try:
        fs = fsspec.filesystem(protocol, **options)
    except ImportError as exc:
        raise UsageError(
            f"{protocol}:// paths need a library fsspec could not import ({exc}): "
            "pip install 'weightcli[remote]'"
        ) from exc
    except (ValueError, TypeError) as exc:  # an unknown protocol, a wrong option
        raise UsageError(f"{protocol}://: {describe(exc)}") from exc
    if protocol in S3 and isinstance(getattr(fs, "retries", None), int):
        fs.retries = min(fs.retries, S3_ATTEMPTS)  # s3fs's own retries around botocore's
    _filesystems[protocol] = fs
    return fs


# An endpoint that accepts a connection and never answers must not hang a run: each
# request gives up after these (botocore's defaults are 60 s, retried; s3fs retries
# again), unless the user's storage options say otherwise. Whole-run limit: --timeout.
S3_CONNECT_TIMEOUT = 10
S3_READ_TIMEOUT = 20
S3_ATTEMPTS = 2


def _s3_deadlines(options: dict[str, Any]) -> dict[str, Any]:
    out = dict(options)
    config = dict(out.get("config_kwargs") or {})
    config.setdefault("connect_timeout", S3_CONNECT_TIMEOUT)
    config.setdefault("read_timeout", S3_READ_TIMEOUT)
    config.setdefault("retries", {"max_attempts": S3_ATTEMPTS, "mode": "standard"})
    out["config_kwargs"] = config
    return out


def describe(exc: BaseException) -> str:
    """One line for a storage error (botocore's messages are long)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    if isinstance(exc, PermissionError):
        line = f"access denied ({line}): check the credentials"
    return line if len(line) < 300 else line[:297] + "..."


class RemotePath(PosixPath):
    """A path in object storage. Pure path operations are pathlib's (the URL's scheme is
    its first part, ``s3:``); file operations use the scheme's fsspec filesystem."""

    @property
    def protocol(self) -> str:
        return self.parts[0].rstrip(":")

    @property
    def key(self) -> str:
        """The path within the filesystem (``bucket/dir/name``)."""
        return "/".join(self.parts[1:])

    def __str__(self) -> str:
        return f"{self.protocol}://{self.key}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __fspath__(self) -> str:
        return str(self)

    def __new__(cls, *args: Any) -> RemotePath:
        if len(args) == 1 and isinstance(args[0], str) and URL.match(args[0]):
            scheme, rest = args[0].split("://", 1)
            args = (f"{scheme}:/{rest.strip('/')}",)
        return super().__new__(cls, *args)

    def bucket(self) -> RemotePath:
        """The bucket (the first part after the scheme)."""
        return RemotePath(f"{self.protocol}://{self.parts[1]}")

    @property
    def fs(self) -> Any:
        return filesystem(self.protocol)

    def _info(self) -> dict[str, Any] | None:
        url = str(self)
        if url in _infos:
            return _infos[url]
        try:
            info: dict[str, Any] | None = self.fs.info(self.key)
        except FileNotFoundError:
            info = None
        except OSError as exc:
            raise InputError(f"{url}: {describe(exc)}") from exc
        except Exception as exc:  # noqa: BLE001 - credentials, endpoint: the library's own types
            raise InputError(f"{url}: {describe(exc)}") from exc
        _infos[url] = info
        return info

    # -- what the stores ask of a path ----------------------------------------------

    def exists(self) -> bool:
        return self._info() is not None

    def is_dir(self) -> bool:
        info = self._info()
        return info is not None and info.get("type") == "directory"

    def is_file(self) -> bool:
        info = self._info()
        return info is not None and info.get("type") != "directory"

    def is_symlink(self) -> bool:
        return False

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        info = self._info()
        if info is None:
            raise FileNotFoundError(2, "no such object", str(self))
        mode = (
            stat_mod.S_IFDIR | 0o755
            if info.get("type") == "directory"
            else stat_mod.S_IFREG | 0o644
        )
        size = int(info.get("size") or 0)
        return os.stat_result((mode, 0, 0, 1, 0, 0, size, 0, 0, 0))

    lstat = stat

    def resolve(self, strict: bool = False) -> RemotePath:
        return self

    def absolute(self) -> RemotePath:
        return self

    def open(self, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if mode not in ("r", "rb"):
            raise OutputError(f"{self}: weightcli writes object storage only by uploading")
        size = self.stat().st_size
        raw = RangeFile(self, size)
        return raw if mode == "rb" else io.TextIOWrapper(io.BufferedReader(raw))

    def read_bytes(self) -> bytes:
        with self.open("rb") as f:
            data: bytes = f.read()
            return data

    def read_text(self, encoding: str | None = None, errors: str | None = None) -> str:
        return self.read_bytes().decode(encoding or "utf-8", errors or "strict")

    def iterdir(self) -> Iterator[RemotePath]:  # type: ignore[override]
        try:
            entries = self.fs.ls(self.key, detail=True)
        except FileNotFoundError:
            return
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{self}: {describe(exc)}") from exc
        for e in entries:
            name = e["name"].rstrip("/").rsplit("/", 1)[-1]
            child = self / name
            _infos[str(child)] = e
            yield child

    def glob(self, pattern: str) -> Iterator[RemotePath]:  # type: ignore[override]
        import fnmatch

        if "/" in pattern:
            raise NotImplementedError("remote glob of one level only")
        for child in sorted(self.iterdir()):
            if fnmatch.fnmatchcase(child.name, pattern):
                yield child

    def walk_files(self) -> Iterator[RemotePath]:
        """Every object below this prefix (for ``-r``)."""
        try:
            found = self.fs.find(self.key, detail=True)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{self}: {describe(exc)}") from exc
        for name, info in sorted(found.items()):
            p = RemotePath(f"{self.protocol}://{name}")
            _infos[str(p)] = info
            yield p


_gc_lock = threading.Lock()
_gc_holds = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _no_collection() -> Iterator[None]:
    """No garbage collection while a range is fetched. h5py reads a remote file through
    :class:`RangeFile` holding its global lock, and the fetch runs on fsspec's IO
    thread: a collection there that frees an h5py object (its ``__dealloc__`` takes the
    same lock) would wait for the reader, which waits for the fetch (a deadlock, seen
    once in a batch worker). Nested and concurrent fetches share one hold."""
    import gc

    global _gc_holds, _gc_was_enabled
    with _gc_lock:
        if _gc_holds == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_holds += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holds -= 1
            if _gc_holds == 0 and _gc_was_enabled:
                gc.enable()


class PreadFile(io.RawIOBase):
    """A read-only, seekable file of ``size`` bytes whose reads are ``pread(n, at)``
    calls (positional: no shared offset to race on)."""

    size: int
    _pos: int = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def pread(self, n: int, at: int) -> bytes:
        """``n`` bytes at ``at`` (fewer at the end)."""
        raise NotImplementedError

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self.size - self._pos))
        if n == 0:
            return 0
        data = self.pread(n, self._pos)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


class RangeFile(PreadFile):
    """A read-only, seekable file over an object, fetched by byte range.

    Reads of less than ``BLOCK`` bytes are served from a small cache of aligned blocks
    (HDF5 reads its metadata a few bytes at a time); larger reads fetch their range
    exactly. Thread-safe (the read-ahead thread and the main thread may share it)."""

    def __init__(self, path: RemotePath, size: int) -> None:
        super().__init__()
        self.path = path
        self.size = size
        self._pos = 0
        self._url = str(path)
        self._lock = threading.Lock()

    def _fetch(self, start: int, end: int) -> bytes:
        try:
            with _no_collection():
                data: bytes = self.path.fs.cat_file(self.path.key, start=start, end=end)
        except FileNotFoundError as exc:
            raise InputError(f"{self.path}: the object disappeared while being read") from exc
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{self.path}: {describe(exc)}") from exc
        _count(len(data))
        if len(data) != end - start:
            raise InputError(f"{self.path}: short read at byte {start} (object changed?)")
        return data

    def _block(self, k: int) -> bytes:
        key = (self._url, k)
        with _lock:
            data = _blocks.get(key)
            if data is not None:
                _blocks.move_to_end(key)
                return data
        start = k * BLOCK
        data = self._fetch(start, min(self.size, start + BLOCK))
        with _lock:
            _blocks[key] = data
            while len(_blocks) > CACHED_BLOCKS:
                _blocks.popitem(last=False)
        return data

    def pread(self, n: int, at: int) -> bytes:
        """``n`` bytes at ``at`` (fewer at the end of the object)."""
        end = min(self.size, at + n)
        if end <= at:
            return b""
        with self._lock:
            if end - at >= BLOCK:
                return self._fetch(at, end)
            first, last = at // BLOCK, (end - 1) // BLOCK
            data = b"".join(self._block(k) for k in range(first, last + 1))
            return data[at - first * BLOCK : end - first * BLOCK]


def _get(path: RemotePath, dest: Path) -> None:
    """Download one object; remember where ``dest`` came from (an :class:`Origin` for
    server-side copies), with the ETag the object had before the download began."""
    info = path._info() or {}
    path.fs.get_file(path.key, str(dest))
    _count(dest.stat().st_size)
    etag = info.get("ETag")
    if path.protocol in S3 and etag:
        bucket, _, key = path.key.partition("/")
        _origins[str(dest)] = Origin(dest, bucket, key, etag)


def download(path: RemotePath, dest: Path) -> Path:
    """Copy an object, or every object below a prefix, to ``dest`` (local)."""
    try:
        if path.is_dir():
            for p in path.walk_files():
                target = dest / p.key[len(path.key) :].lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                _get(p, target)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            _get(path, dest)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such object") from exc
    except OSError as exc:
        raise InputError(f"{path}: {describe(exc)}") from exc
    return dest


def open_range(path: Path) -> RangeFile:
    """A remote file, read by byte range."""
    assert isinstance(path, RemotePath)
    return RangeFile(path, path.stat().st_size)


def stage(path: Path, siblings: list[Path] | None = None) -> Path:
    """A local copy of a remote checkpoint (a file, a folder, or a TF checkpoint
    prefix's index and shards; and the ``siblings`` it names, such as a weights map's
    shards), in a fresh temporary folder: ``copy.parent`` is that folder, for the
    caller to remove."""
    assert isinstance(path, RemotePath)
    # Removed at exit if left; a later run removes those of a process killed outright.
    temps.remove_stale_temps(Path(tempfile.gettempdir()), "stage.")
    folder = temps.make_dir(None, f"stage.{temps.TEMP_TAG}{os.getpid()}.")
    dest = folder / path.name
    _named[str(dest)] = str(path)
    try:
        if path.exists():
            download(path, dest)
        else:  # a checkpoint prefix: prefix.index, prefix.data-*
            for p in path.parent.glob(f"{path.name}.*"):
                download(p, folder / p.name)
        for sibling in siblings or []:
            assert isinstance(sibling, RemotePath)
            download(sibling, folder / sibling.name)
    except BaseException:
        temps.remove(folder)
        forget_origins(folder)
        raise
    return dest


_local_copies: dict[str, Path] = {}


def as_local(path: Path) -> Path:
    """A path on this machine for code that reads only local files (TensorFlow and
    Keras loading a model, numpy loading calibration data): ``path`` itself, or a copy
    downloaded once per process and removed when the process ends."""
    if not is_url(path):
        return path
    url = str(path)
    if url not in _local_copies:
        _local_copies[url] = stage(path)  # a temporary: removed when the process ends
    return _local_copies[url]


# Local copies of remote models (a staged path -> the URL it came from), so that a
# message about a copy names the model as the user did.
_named: dict[str, str] = {}


def as_urls(text: str) -> str:
    """``text`` with every staged local copy's path replaced by the URL it came from."""
    for local in sorted(_named, key=len, reverse=True):
        if local in text:
            text = text.replace(local, _named[local])
    return text


def forget_origins(folder: Path) -> None:
    """Forget the downloads below ``folder`` (removed)."""
    temps.forget(folder)
    for name in [n for n in _origins if Path(n).is_relative_to(folder)]:
        del _origins[name]


def _origin_for(name: str, protocol: str) -> Origin | None:
    """The downloaded file an output file most likely shares bytes with: the one
    downloaded, or the one whose name ends the most like ``name`` (a SavedModel's
    ``variables/variables.data-00000-of-00001``, a checkpoint's ``.index``). A wrong
    guess costs a comparison: only identical bytes are copied."""
    if protocol not in S3:
        return None
    live = [o for o in _origins.values() if o.local.is_file()]

    def common_tail(o: Origin) -> int:
        a, b = str(o.local), name
        n = 0
        while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
            n += 1
        return n

    return max(live, key=common_tail, default=None)


def _put(fs: Any, local: Path, out: RemotePath, name: str) -> None:
    """One file to one object: unchanged parts copied server-side where they can be."""
    from weightcli.stores.s3parts import upload_with_copies

    origin = _origin_for(name, out.protocol)
    if origin is not None:
        bucket, _, key = out.key.partition("/")
        if upload_with_copies(fs, local, bucket, key, origin):
            return
    fs.put_file(str(local), out.key)


def _upload_order(rel: str) -> tuple[int, str]:
    """Nested files first, the top level's last, and the file that makes a folder a
    model (``saved_model.pb``, ``config.json``) the very last: a reader never finds
    a model whose variables are not there yet."""
    marker = rel in ("saved_model.pb", "config.json")
    return (2 if marker else 1 if "/" not in rel else 0, rel)


def upload(local: Path, out: RemotePath, overwrite: bool) -> None:
    """Put a finished local output at ``out``: a file as one object (it appears whole,
    or not at all), a folder object by object (the model's marker file last; a
    replaced folder's objects that the new one lacks removed after it). Without
    ``overwrite``, an existing OUT is an error. Parts that a downloaded source
    already holds are copied server-side (:mod:`weightcli.stores.s3parts`)."""
    fs = out.fs
    try:
        if not overwrite and fs.exists(out.key):
            raise OutputError.naming(f"{literal(out)}: exists (give {{force}} to replace it)")
        if local.is_dir():
            rels = sorted(
                (p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()),
                key=_upload_order,
            )
            before = {p.key for p in out.walk_files()} if overwrite else set()
            done: list[str] = []
            try:
                for rel in rels:
                    key = f"{out.key}/{rel}"
                    _put(fs, local / rel, out / rel, rel)
                    done.append(key)
            except BaseException:
                for key in done:  # a partial folder is no output
                    with contextlib.suppress(Exception):
                        fs.rm_file(key)
                raise
            for key in sorted(before - set(done)):  # the replaced folder's leftovers
                fs.rm_file(key)
        else:
            _put(fs, local, out, out.name)
    except OutputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise OutputError(f"{out}: cannot upload: {describe(exc)}") from exc
    finally:
        forget_object(out)


def forget_object(path: RemotePath) -> None:
    """Drop what this process cached about an object it wrote (and anything below it)."""
    url = str(path)
    for key in [k for k in _infos if k == url or k.startswith(url + "/")]:
        _infos.pop(key, None)
    with _lock:
        for block in [b for b in _blocks if b[0] == url or b[0].startswith(url + "/")]:
            del _blocks[block]
