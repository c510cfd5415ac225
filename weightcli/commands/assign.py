"""``set``: assign tensors from arrays (``.npy``, or the members of a ``.npz`` keyed by
canonical name, as ``dump`` writes them) or a constant, through the surgery writer.

Shapes must match exactly (a constant fills the tensor); values are cast to the
tensor's own dtype and the report gives the largest change the cast made (float64 into
float32 rounds; a float into an integer tensor is refused).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weightcli import arrays, pipeline
from weightcli.errors import InputError, ParameterError, UsageError, literal
from weightcli.figures import Figures, SetFigures
from weightcli.params import OutputSpec
from weightcli.results import TransformResult
from weightcli.select import Selection
from weightcli.steps import Step, TensorOp
from weightcli.stores import open_store
from weightcli.stores.base import Block
from weightcli.stores.remote import as_path
from weightcli.tensor import TensorInfo

__all__ = ["SetRequest", "parse_assignment", "run"]


@dataclass(frozen=True)
class SetRequest:
    """``assignments``: (canonical name, ``.npy`` path or constant); ``from_npz``: a
    ``.npz`` whose keys are canonical names."""

    assignments: tuple[tuple[str, str | float], ...] = ()
    from_npz: Path | None = None
    out: OutputSpec = field(default_factory=OutputSpec)

    def __post_init__(self) -> None:
        if not self.assignments and self.from_npz is None:
            raise ParameterError("give NAME=FILE.npy, NAME=VALUE or {from_npz} FILE.npz")


def parse_assignment(text: str) -> tuple[str, str | float]:
    """``NAME=FILE.npy`` or ``NAME=VALUE``."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise ParameterError(
            f"assignments take NAME=FILE.npy or NAME=VALUE, got {literal(repr(text))}"
        )
    try:
        number = float(value)
    except ValueError:
        return name, value
    if not math.isfinite(number):
        raise ParameterError(
            f"{literal(name)}: the value must be a finite number, got {literal(value)}"
        )
    return name, number


class _SetOp(TensorOp):
    def __init__(self, info: TensorInfo, source: Any, label: str) -> None:
        super().__init__(info)
        self.source = source  # an array (possibly memory-mapped) or a float
        self.label = label
        self.cast_error = 0.0

    def apply(self, where: Block, block: np.ndarray, count: bool = True) -> np.ndarray:
        if isinstance(self.source, float):
            want = np.full(block.shape, self.source, np.float64)
        else:
            want = np.asarray(self.source[where.index] if self.source.ndim else self.source)
        out = want.astype(block.dtype).reshape(block.shape)
        if count and want.dtype != block.dtype and out.size and want.dtype.kind in "fiu":
            err = np.abs(out.astype(np.float64) - want.astype(np.float64))
            self.cast_error = max(self.cast_error, float(np.nanmax(err)))
        return out

    def figures(self) -> Figures:
        if not isinstance(self.source, float) and self.source.dtype != np.dtype(self.info.dtype):
            return SetFigures(
                self.label, f"{self.source.dtype} -> {self.info.dtype}", self.cast_error
            )
        return SetFigures(self.label)


class _SetStep(Step):
    command = "set"

    def __init__(
        self, ops: dict[str, tuple[Any, str]], params: dict[str, Any], optimizer: bool
    ) -> None:
        super().__init__(Selection(floats_only=False, include_optimizer=optimizer))
        self.ops, self._params = ops, params

    def selects(self, info: TensorInfo) -> bool:
        return info.path in self.ops

    def op(self, info: TensorInfo) -> TensorOp | None:
        source, label = self.ops[info.path]
        return _SetOp(info, source, label)

    def params(self) -> dict[str, Any]:
        return self._params


def _check(info: TensorInfo, value: Any, where: str) -> None:
    if isinstance(value, float):
        if not info.is_float and not float(value).is_integer():
            raise UsageError(f"{info.name} is {info.dtype}: {value} is not a whole number")
        return
    _check_header(info, tuple(value.shape), value.dtype, where)


def _check_header(
    info: TensorInfo, shape: tuple[int, ...], dtype: np.dtype[Any], where: str
) -> None:
    """An array's shape and dtype against the tensor's, before its data is read."""
    if shape != info.shape:
        raise UsageError(f"{info.name}: {where} has shape {shape}, the tensor {info.shape}")
    if dtype.kind not in "fiub":
        raise UsageError(f"{info.name}: {where} holds {dtype}, not numbers")
    if dtype.kind == "f" and not info.is_float:
        raise UsageError(
            f"{info.name} is {info.dtype}: floats from {where} cannot be written into it"
        )


def run(request: SetRequest, path: str | Path) -> TransformResult:
    """Assign the request's values to a patched copy of ``path``."""
    src = as_path(path)
    with open_store(src) as store:
        ops: dict[str, tuple[Any, str]] = {}
        params: dict[str, Any] = {"tensors": {}}
        npz = None
        try:
            if request.from_npz is not None:
                loaded = arrays.load_any(request.from_npz)
                if not isinstance(loaded, arrays.Npz):
                    raise InputError(
                        f"{request.from_npz}: a single array, not a .npz of named arrays"
                    )
                npz = loaded
                names = {t.name for t in store.tensors()}
                unknown = [k for k in npz.files if k not in names]
                if unknown:
                    store.tensor(unknown[0])  # raises, naming the nearest
                for key in npz.files:
                    info = store.tensor(key)
                    where = f"{request.from_npz}[{key}]"
                    _check_header(info, *npz.header(key), where)
                    array = npz[key]
                    _check(info, array, where)
                    ops[info.path] = (array, f"{request.from_npz.name}[{key}]")
                    params["tensors"][key] = request.from_npz.name
            for name, spec in request.assignments:
                info = store.tensor(name)
                if isinstance(spec, float):
                    value: Any = spec
                    label = f"constant {spec:g}"
                else:
                    value = arrays.load_npy(Path(spec))
                    label = Path(spec).name
                _check(info, value, label)
                ops[info.path] = (value, label)
                params["tensors"][name] = label
            out = request.out.plan(store, src)
            return pipeline.run(
                store,
                [_SetStep(ops, params, any(t.optimizer for t in store.tensors() if t.path in ops))],
                None if request.out.dry_run else out,
                ["set", str(src)],
                request.out,
            )
        finally:
            if npz is not None:
                npz.close()
