"""Byte-level comparison of two HDF5 files, object by object (the surgery check)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from conftest import extract_weights


def objects(path: Path | str) -> dict[str, tuple[str, dict[str, bytes], bytes | None]]:
    """path -> (kind, attributes as raw bytes, dataset raw bytes)."""
    out: dict[str, tuple[str, dict[str, bytes], bytes | None]] = {}
    with h5py.File(path, "r") as f:

        def attrs(o: h5py.HLObject) -> dict[str, bytes]:
            return {k: _raw(o.attrs[k]) + str(o.attrs.get_id(k).dtype).encode() for k in o.attrs}

        out["/"] = ("group", attrs(f), None)

        def visit(name: str, o: object) -> None:
            if isinstance(o, h5py.Dataset):
                data = _raw(o[()]) + str(o.dtype).encode() + str(o.shape).encode()
                out["/" + name] = ("dataset", attrs(o), data)
            else:
                out["/" + name] = ("group", attrs(o), None)  # type: ignore[arg-type]

        f.visititems(visit)
    return out


def _raw(value: object) -> bytes:
    a = np.asarray(value)
    if a.dtype.kind == "O":  # variable-length strings: compare values, not pointers
        return repr(a.tolist()).encode()
    return a.tobytes()


def weights_file(path: Path, tmp: Path) -> Path:
    return extract_weights(path, tmp)


def differing(a: Path, b: Path, tmp: Path) -> set[str]:
    """Objects whose data or attributes differ, plus objects only in one file."""
    oa = objects(weights_file(a, tmp))
    ob = objects(weights_file(b, tmp))
    return {k for k in oa.keys() | ob.keys() if oa.get(k) != ob.get(k)}
