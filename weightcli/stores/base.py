"""The store interface: list a checkpoint's tensors, read them in blocks, patch a copy.

A store knows one container layout and nothing else. Commands work only through
this interface, so every format gets every command.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weightcli.tensor import TensorInfo

# Largest block handed out at once, in elements (float32: 1 MiB). Bounds memory
# whatever the model size; large enough that per-call overhead stays negligible.
BLOCK_ELEMS = 256 * 1024


@dataclass
class StoreMeta:
    """What the container says about itself, for the inspect header."""

    format: str
    format_label: str
    writer: str | None = None
    model_class: str | None = None
    model_name: str | None = None
    has_config: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def row_blocks(shape: tuple[int, ...], max_elems: int = BLOCK_ELEMS) -> Iterator[tuple[int, int]]:
    """Split axis 0 of ``shape`` into [start, stop) row ranges of at most ``max_elems``.

    A scalar or a tensor whose single row exceeds the budget is one block per row
    (one block in all for a scalar).
    """
    if not shape:
        yield 0, 1
        return
    rows = shape[0]
    row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    step = max(1, max_elems // max(row, 1))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


class Patcher(abc.ABC):
    """A copy of a store's container being patched.

    Writes go to a temporary location; ``commit`` renames it into place and
    ``abort`` removes it, so no half-written output survives a failure. Use as a
    context manager: leaving the block with an exception aborts.
    """

    def __init__(self) -> None:
        self._done = False

    @abc.abstractmethod
    def begin(self, info: TensorInfo, dtype: str) -> None:
        """Announce that ``info`` is rewritten, stored as ``dtype``."""

    @abc.abstractmethod
    def write(self, info: TensorInfo, start: int, block: np.ndarray) -> None:
        """Write rows [start, start + len(block)) of ``info`` (the whole tensor for a scalar)."""

    @abc.abstractmethod
    def set_history(self, history: list[dict[str, Any]]) -> None:
        """Record the provenance list in the output."""

    @abc.abstractmethod
    def _commit(self) -> None: ...

    @abc.abstractmethod
    def _abort(self) -> None: ...

    def commit(self) -> None:
        if not self._done:
            self._commit()
            self._done = True

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._abort()

    def __enter__(self) -> Patcher:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None or not self._done:
            self.abort()


class Store(abc.ABC):
    """A checkpoint opened for reading."""

    path: Path
    meta: StoreMeta

    @abc.abstractmethod
    def tensors(self) -> list[TensorInfo]:
        """Every tensor, model weights and optimizer state, in file order."""

    @abc.abstractmethod
    def read(
        self, info: TensorInfo, start: int | None = None, stop: int | None = None
    ) -> np.ndarray:
        """Rows [start, stop) of a tensor (all of it by default), in its stored dtype."""

    def blocks(
        self, info: TensorInfo, max_elems: int = BLOCK_ELEMS
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(start_row, block) pairs covering the tensor, each at most ``max_elems``."""
        if not info.shape:
            yield 0, self.read(info)
            return
        for start, stop in row_blocks(info.shape, max_elems):
            yield start, self.read(info, start, stop)

    @abc.abstractmethod
    def patch(self, out: Path, retype: dict[str, str] | None = None) -> Patcher:
        """A patcher writing a copy of this checkpoint to ``out``.

        ``retype`` maps tensor paths to the dtype they will be stored in, when a
        transform changes it.
        """

    def supports_dtype(self, dtype: str) -> str | None:
        """None when the format can store ``dtype``, else the reason it cannot."""
        return None

    def check(self, info: TensorInfo) -> None:  # noqa: B027 - optional hook
        """Verify every stored copy of a tensor (checksums) where the format has any.

        ``blocks`` already verifies the copy it streams, so callers that read a
        tensor's data need this only for the other copies (``verify``).
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
