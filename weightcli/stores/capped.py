"""Whole-file reads, each capped before it starts: the one way a store (or a recipe)
reads a small file whole (a JSON config or map, ``saved_model.pb``, a checkpoint's
state file, a ``.index`` table). A file over its cap is refused with one line instead
of costing gigabytes, and a special file (a FIFO) is refused instead of blocking."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from weightcli.errors import CorruptError, InputError

MiB = 1 << 20

# Caps, by what is read.
JSON_BYTES = 64 * MiB  # config.json, metadata.json, a weights map
STATE_FILE_BYTES = 1 * MiB  # a TF checkpoint's ``checkpoint`` state file
GRAPH_BYTES = 1024 * MiB  # saved_model.pb, keras_metadata.pb (protobuf's own limit: 2 GiB)
INDEX_BYTES = 1024 * MiB  # a TF checkpoint's .index table
RECIPE_BYTES = 1 * MiB  # a TOML recipe
HISTORY_BYTES = 16 * MiB  # weightcli's own history record


def read_bytes(path: Path, limit: int, what: str = "file") -> bytes:
    """The bytes of ``path``, refused when it is not a regular file or holds more than
    ``limit`` bytes (checked before reading, and again while reading: a size can lie)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file: refused")
    if st.st_size > limit:
        raise CorruptError(
            f"{path}: {st.st_size} bytes, over the limit of {limit} for a {what}: refused"
        )
    try:
        with path.open("rb") as f:
            # The size stat gave, plus one byte to see growth: f.read(n) allocates n bytes
            # before it reads (a 1 GiB allocation for every small saved_model.pb).
            want = st.st_size + 1
            data: bytes = f.read(want)
            if len(data) == want:  # it grew since: read on, up to the limit
                data += f.read(limit + 1 - len(data))
    except OSError as exc:
        raise InputError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise CorruptError(f"{path}: over the limit of {limit} bytes for a {what}: refused")
    return data


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise CorruptError(f"names {twice!r} twice (readers disagree on which counts): refused")
    return out


def parse_json(data: bytes | str, label: str, unique: bool = False) -> Any:
    """JSON text, or one line that says why not (damaged, nested too deeply; with
    ``unique``, an object that names a key twice)."""
    try:
        return json.loads(data, object_pairs_hook=_unique if unique else None)
    except CorruptError as exc:
        raise CorruptError(f"{label}: {exc}") from None
    except RecursionError:
        raise CorruptError(f"{label}: nested too deeply") from None
    except (ValueError, TypeError) as exc:
        raise CorruptError(f"{label}: not readable JSON: {exc}") from None


def read_json(path: Path, limit: int = JSON_BYTES, what: str = "JSON file") -> Any:
    """A JSON file, capped (``read_bytes``) and parsed (``parse_json``)."""
    return parse_json(read_bytes(path, limit, what), str(path))


def read_json_object(
    path: Path, limit: int = JSON_BYTES, what: str = "JSON file"
) -> dict[str, Any]:
    """``read_json`` of a file that must hold an object."""
    value = read_json(path, limit, what)
    if not isinstance(value, dict):
        raise CorruptError(f"{path}: holds {type(value).__name__}, not an object")
    return value
