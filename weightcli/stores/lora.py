"""KerasHub's LoRA adapter files (``*.lora.h5``): read and written.

``keras_hub.models.Backbone.save_lora_weights`` writes, through Keras's ``H5IOStore``::

    /lora/vars/rank                       int64 scalar
    /lora/{i}/vars/lora_kernel_a          kernel.shape[:-1] + (rank,)
    /lora/{i}/vars/lora_kernel_b          (rank, kernel.shape[-1])

``i`` is the layer's index among the backbone's layers that have weights, in
``_flatten_layers(include_self=False)`` order ("since names are non-unique"); the LoRA
``alpha`` is not stored (KerasHub enables LoRA with ``alpha = rank``). An Embedding
layer's factors are Keras's ``lora_embeddings_a`` / ``_b``: weightcli reads and writes
them under those names (KerasHub itself only saves ``lora_kernel_*``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from weightcli.errors import CorruptError, InputError, UnsupportedError, literal
from weightcli.stores import h5util, output
from weightcli.stores.interrupts import signals_held

SUFFIX = ".lora.h5"
NAMES = (("lora_kernel_a", "lora_kernel_b"), ("lora_embeddings_a", "lora_embeddings_b"))


@dataclass(frozen=True)
class Entry:
    """One adapted layer: its index and its two factors' datasets."""

    index: int
    a: h5util.Dset
    b: h5util.Dset
    names: tuple[str, str]

    @property
    def embeddings(self) -> bool:
        return self.names[0].startswith("lora_embeddings")


class Adapter:
    """An adapter file opened read-only, every dataset checked before one is read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise InputError(f"{path}: no such adapter file")
        self._file = h5util.open_h5(path, str(path))
        try:
            self.rank, self.entries = self._read()
        except BaseException:
            self._file.close()
            raise

    def _read(self) -> tuple[int, list[Entry]]:
        size = h5util.file_size(self._file)
        dsets = h5util.index(self._file, size)
        rank_set = dsets.get("/lora/vars/rank")
        if rank_set is None:
            raise CorruptError(
                f"{self.path}: not a KerasHub LoRA adapter (no /lora/vars/rank: "
                "Backbone.save_lora_weights writes one)"
            )
        if rank_set.shape != () or rank_set.dtype.kind not in "iu":
            raise CorruptError(f"{self.path}: /lora/vars/rank is not an integer scalar")
        rank = int(np.asarray(rank_set.dataset[()]))
        if not 0 < rank <= 1 << 16:
            raise CorruptError(f"{self.path}: rank {rank} is not a LoRA rank")
        entries: list[Entry] = []
        for key in sorted(k for k in self._file["lora"] if k != "vars"):
            where = f"{self.path}: lora/{literal(key)}"
            if not key.isdigit() or len(key) > 9:
                raise CorruptError(f"{where}: an adapted layer is named by its index")
            for names in NAMES:
                a = dsets.get(f"/lora/{key}/vars/{names[0]}")
                b = dsets.get(f"/lora/{key}/vars/{names[1]}")
                if a is not None or b is not None:
                    break
            if a is None or b is None:
                raise CorruptError(f"{where}: needs both lora_kernel_a and lora_kernel_b")
            for d in (a, b):
                if d.dtype.kind != "f":
                    raise CorruptError(f"{where}: {d.name} is {d.dtype}, not floating point")
            if (
                len(a.shape) < 2
                or a.shape[-1] != rank
                or b.shape[:1] != (rank,)
                or len(b.shape) != 2
            ):
                raise CorruptError(
                    f"{where}: factors of shapes {a.shape} and {b.shape} do not have rank {rank}"
                )
            entries.append(Entry(int(key), a, b, names))
        if not entries:
            raise CorruptError(f"{self.path}: the adapter adapts no layer")
        entries.sort(key=lambda e: e.index)
        return rank, entries

    def factors(self, entry: Entry) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(entry.a.dataset[()]), np.asarray(entry.b.dataset[()])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Adapter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write(
    out: Path,
    rank: int,
    entries: list[tuple[int, np.ndarray, np.ndarray, bool]],
    history: dict[str, Any],
    overwrite: bool,
) -> int:
    """A new adapter at ``out`` (each entry: index, a, b, embeddings?), written to a
    temporary file beside it and renamed into place; the history in the root attribute
    weightcli's other HDF5 outputs use. The bytes written."""
    if not out.name.endswith(SUFFIX):
        raise UnsupportedError(
            f"{out}: an adapter's name ends in {SUFFIX} (KerasHub's load_lora_weights checks it)"
        )
    with signals_held():
        tmp = output.temp_beside(out)
    with h5py.File(tmp, "w") as f:
        f.create_group("lora/vars").create_dataset("rank", data=np.int64(rank))
        for index, a, b, embeddings in entries:
            names = NAMES[1] if embeddings else NAMES[0]
            g = f.create_group(f"lora/{index}/vars")
            g.create_dataset(names[0], data=a)
            g.create_dataset(names[1], data=b)
        f.attrs[h5util.HISTORY_ATTR] = json.dumps([history])
    size = tmp.stat().st_size
    output.publish(tmp, out, overwrite)
    return size
