"""``dump``: the selected tensors as a numpy archive (``.npz``, keyed by canonical name)
or a folder of ``.npy`` files (``a/b/kernel.npy`` for ``a/b/kernel``), streamed block by
block into each member; ``set --from`` reads the archive back."""

from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from weightcli.errors import OutputError, ParameterError, UnsupportedError, UsageError, literal
from weightcli.results import DumpResult
from weightcli.select import Selection, apply
from weightcli.stores import open_store, temps
from weightcli.stores.base import Store
from weightcli.stores.output import (
    inside,
    publish,
    resolve_output,
    temp_beside,
    temp_dir_beside,
)
from weightcli.stores.quantized import DequantizedStore, has_quantized
from weightcli.tensor import TensorInfo

__all__ = ["DumpRequest", "DumpResult", "run"]

DEFAULT_MAX_BYTES = 2 << 30


@dataclass(frozen=True)
class DumpRequest:
    """Which tensors, where, in which layout, and the most bytes to write."""

    output: Path
    selection: Selection = field(default_factory=lambda: Selection(floats_only=False))
    layout: str = "npz"
    max_bytes: int = DEFAULT_MAX_BYTES
    force: bool = False
    # Quantized weights as the floats they stand for (their scales then left out),
    # instead of their integer codes.
    dequantize: bool = False

    def __post_init__(self) -> None:
        if self.layout not in ("npz", "npy-dir"):
            raise ParameterError("{format} must be npz or npy-dir")
        if self.max_bytes < 0:
            raise ParameterError("{max_bytes} must be >= 0 (0: no limit)")


def _header(info: TensorInfo) -> dict[str, Any]:
    return {
        "descr": np.lib.format.dtype_to_descr(np.dtype(info.dtype)),
        "fortran_order": False,
        "shape": info.shape,
    }


def _write(store: Store, info: TensorInfo, fp: BinaryIO) -> None:
    np.lib.format.write_array_header_2_0(fp, _header(info))
    for _, block in store.blocks(info):
        fp.write(np.ascontiguousarray(block).tobytes())


def run(request: DumpRequest, path: str | Path) -> DumpResult:
    """Write the selected tensors of ``path``."""
    started = time.perf_counter()
    with open_store(path) as opened:
        store: Store = opened
        if request.dequantize:
            if not has_quantized(opened):
                raise UsageError(
                    f"{literal(opened.path)} holds no quantized weights: drop {{dequantize}}"
                )
            store = DequantizedStore(opened)
        sel = request.selection
        tensors = store.tensors()
        if sel.select or sel.exclude or sel.layer_types or sel.kinds:
            chosen = apply(tensors, sel, store.meta.has_config)
        else:
            chosen = [t for t in tensors if sel.include_optimizer or not t.optimizer]
        chosen = [t for t in chosen if t.dtype != "string"]
        odd = [t.name for t in chosen if t.dtype == "bfloat16"]
        if odd:
            raise UnsupportedError(f"{', '.join(odd[:3])}: bfloat16 has no .npy type; leave it out")
        total = sum(t.nbytes for t in chosen)
        if request.max_bytes and total > request.max_bytes:
            raise ParameterError(
                f"the dump would be {total} bytes, over {{max_bytes}} {request.max_bytes}: "
                "raise it (0: no limit) or select fewer tensors"
            )
        out = resolve_output(store.path, request.output, False, request.force)
        # Names come from the file: each becomes a path (or a member name) only through
        # the one gate, before anything is written.
        for t in chosen:
            inside(out, t.name + ".npy")
        if request.layout == "npz":
            tmp = temp_beside(out)
            try:
                with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                    for t in chosen:
                        with zf.open(t.name + ".npy", "w", force_zip64=True) as fp:
                            _write(store, t, fp)  # type: ignore[arg-type]
                publish(tmp, out, request.force)
            except OSError as exc:
                temps.remove(tmp)
                raise OutputError(f"{out}: cannot write: {exc.strerror or exc}") from exc
            except BaseException:
                temps.remove(tmp)
                raise
        else:
            folder = temp_dir_beside(out)
            try:
                for t in chosen:
                    dest = inside(folder, t.name + ".npy")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with open(dest, "wb") as fp:
                        _write(store, t, fp)
                publish(folder, out, request.force)
            except BaseException:
                temps.remove(folder)
                raise
        return DumpResult(
            str(path), str(out), request.layout, chosen, time.perf_counter() - started
        )
