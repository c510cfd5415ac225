"""``reinit``: re-initialise the selected tensors with a Keras initialiser (fans computed
as Keras computes them), reproducibly from a seed, through the surgery writer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weightcli import pipeline
from weightcli.errors import ParameterError, UsageError, literal
from weightcli.figures import Figures, InitFigures
from weightcli.params import OutputSpec
from weightcli.results import TransformResult
from weightcli.select import Selection
from weightcli.steps import Step, TensorOp
from weightcli.stores import open_store
from weightcli.stores.base import Block
from weightcli.stores.remote import as_path
from weightcli.tensor import TensorInfo
from weightcli.transforms import initializers as init

__all__ = ["ReinitRequest", "run"]


@dataclass(frozen=True)
class ReinitRequest:
    """The initialiser, its parameters, the seed, the (required) selection, the output."""

    initializer: str
    selection: Selection
    seed: int = 0
    params: tuple[tuple[str, float], ...] = ()
    out: OutputSpec = field(default_factory=OutputSpec)

    def __post_init__(self) -> None:
        if self.initializer not in init.NAMES:
            raise ParameterError(f"{{initializer}} must be one of {', '.join(init.NAMES)}")
        if not (self.selection.select or self.selection.kinds or self.selection.layer_types):
            raise ParameterError("say which tensors to re-initialise with {select} GLOB")
        if not 0 <= self.seed < 2**63:
            raise ParameterError("{seed} must be >= 0")
        allowed = {
            "constant": {"value"},
            "random_normal": {"mean", "stddev"},
            "random_uniform": {"minval", "maxval"},
            "orthogonal": {"gain"},
        }.get(self.initializer, set())
        for key, value in self.params:
            if key not in allowed:
                raise ParameterError(
                    f"{{{key}}} does not go with {{initializer}} {self.initializer}"
                )
            if not np.isfinite(value):
                raise ParameterError(f"{{{key}}} must be a finite number")
        kw = dict(self.params)
        if self.initializer == "random_normal" and kw.get("stddev", 0.05) <= 0:
            raise ParameterError("{stddev} must be > 0")
        if self.initializer == "random_uniform" and kw.get("minval", -0.05) >= kw.get(
            "maxval", 0.05
        ):
            raise ParameterError("{minval} must be below {maxval}")


class _ReinitOp(TensorOp):
    def __init__(self, info: TensorInfo, request: ReinitRequest, index: int) -> None:
        super().__init__(info)
        self.request = request
        self.rng = np.random.default_rng([request.seed, index])
        self.kw = dict(request.params)
        self._pending: list[np.ndarray] | None = None
        if request.initializer == "orthogonal" and (
            info.size > init.ORTHOGONAL_MAX_ELEMS or info.ndim < 2
        ):
            raise UsageError(
                f"{literal(info.name)}: orthogonal needs a kernel of 2+ axes and at most "
                f"{init.ORTHOGONAL_MAX_ELEMS} elements"
            )

    def apply(self, where: Block, block: np.ndarray, count: bool = True) -> np.ndarray:
        if self.request.initializer == "orthogonal":
            if self._pending is None:
                self._pending = [
                    next(
                        init.values(
                            "orthogonal", self.info.shape, self.rng, [self.info.size], **self.kw
                        )
                    )
                ]
            full = self._pending[0]
            part = full[where.first : where.first + block.size]
            return part.astype(block.dtype).reshape(block.shape)
        data = next(
            init.values(
                self.request.initializer, self.info.shape, self.rng, [block.size], **self.kw
            )
        )
        return data.astype(block.dtype).reshape(block.shape)

    def figures(self) -> Figures:
        fan_in, fan_out = init.compute_fans(self.info.shape)
        return InitFigures(
            self.request.initializer,
            fan_in,
            fan_out,
            self.request.seed,
            dict(init.parameters(self.request.initializer, self.info.shape, **self.kw)),
        )


class _ReinitStep(Step):
    command = "reinit"

    def __init__(self, request: ReinitRequest, order: dict[str, int]) -> None:
        super().__init__(request.selection)
        self.request, self.order = request, order

    def op(self, info: TensorInfo) -> TensorOp | None:
        return _ReinitOp(info, self.request, self.order[info.path])

    def params(self) -> dict[str, Any]:
        return {
            "initializer": self.request.initializer,
            "seed": self.request.seed,
            **dict(self.request.params),
        }


def run(request: ReinitRequest, path: str | Path) -> TransformResult:
    src = as_path(path)
    with open_store(src) as store:
        order = {t.path: i for i, t in enumerate(store.tensors())}
        out = request.out.plan(store, src)
        return pipeline.run(
            store,
            [_ReinitStep(request, order)],
            None if request.out.dry_run else out,
            ["reinit", str(src), "--initializer", request.initializer],
            request.out,
        )
