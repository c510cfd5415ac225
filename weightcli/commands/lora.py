"""``lora merge`` and ``lora extract``: KerasHub LoRA adapters applied to a saved
checkpoint, and made from a fine-tune, without running the model.

Which kernel an adapter entry adapts: KerasHub names a layer by its index among the
backbone's layers that have weights, in ``_flatten_layers`` order; weightcli finds that
order by building BASE's model from its config with Keras, without allocating a weight
(``framework.keras_layer_slots``), and the kernel's stored path from Keras's own saving
walk. This is the one step that needs the ``tf`` extra.

merge: each targeted kernel W += (alpha / rank) A @ B, as Keras's
``_get_kernel_with_merged_lora`` / the ``kernel`` property compute it (Dense, EinsumDense
and convolutions: A of shape ``kernel.shape[:-1] + (rank,)``, B ``(rank, last)``;
Embedding: ``embeddings`` the same way), in float64, rounded once to the kernel's dtype;
block by block through the pipeline (the surgery writer), each block's rows of A times
B's columns. ``alpha`` defaults to the rank (KerasHub's ``enable_lora``), so the scale is 1.

extract: for each LoRA-capable layer whose kernel differs between BASE and TUNED, the
difference reshaped to 2-D as Keras's LoRA factors it (``[prod(shape[:-1]), last]``),
its exact SVD truncated to the rank: A = U_r sqrt(S_r), B = sqrt(S_r) V_r^T (alpha =
rank, scale 1). One rank for all (KerasHub's adapters have one): ``rank``, or the
smallest that keeps ``energy`` of every kernel's squared singular values. The SVD needs
the whole difference in memory: kernels over ``EXTRACT_MAX_ELEMS`` are refused.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weightcli import pipeline
from weightcli.digest import digest
from weightcli.errors import (
    CorruptError,
    InputError,
    OutputError,
    ParameterError,
    UnsupportedError,
    literal,
)
from weightcli.figures import Figures, LoraFigures
from weightcli.params import OutputSpec
from weightcli.results import LoraExtractResult, LoraKernel, TransformResult
from weightcli.select import Selection
from weightcli.steps import Step, TensorOp
from weightcli.stores import capped, open_store
from weightcli.stores import lora as adapters
from weightcli.stores.base import Block, Provenance, Store
from weightcli.stores.remote import as_path
from weightcli.tensor import TensorInfo

__all__ = ["ExtractRequest", "MergeRequest", "extract", "merge"]

EXTRACT_MAX_ELEMS = 1 << 26  # 64 Mi elements: 512 MiB as float64, the SVD's input


def _config(store: Store, src: Path, architecture: Path | None) -> Any:
    """The Keras model config that says BASE's layers: BASE's own, or ``architecture``'s
    (a model file, or a ``config.json`` such as a KerasHub preset's)."""
    if architecture is not None:
        if architecture.suffix == ".json":
            return capped.read_json(architecture, what="model config")
        with open_store(architecture) as arch:
            config = getattr(arch, "model_config", None)
            if not isinstance(config, dict):
                raise InputError(f"{architecture}: holds no Keras model config")
            return config
    config = getattr(store, "model_config", None)
    if not isinstance(config, dict):
        raise ParameterError(
            f"{literal(str(src))}: a weights-only file: the adapter names layers by their "
            "index in the model, so give {architecture} MODEL (a .keras file, or a "
            "KerasHub preset's config.json)"
        )
    return config


def _slots(store: Store, src: Path, architecture: Path | None) -> list[Any]:
    from weightcli import framework  # the tf extra, needed here only

    return framework.keras_layer_slots(_config(store, src, architecture), str(src))


def _target(
    slot: Any, by_path: dict[str, TensorInfo], by_name: dict[str, TensorInfo]
) -> TensorInfo | None:
    """The tensor of a slot's LoRA target: by its stored path in a Keras 3 weights file,
    else (a legacy .h5, a SavedModel) by the variable's Keras path as canonical name."""
    if slot.target is not None and slot.target in by_path:
        return by_path[slot.target]
    return by_name.get(slot.variable) if slot.variable else None


# -- merge -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeRequest:
    """The adapter, its alpha (None: the rank, as KerasHub), the model config's source."""

    adapter: Path
    alpha: float | None = None
    architecture: Path | None = None
    out: OutputSpec = field(default_factory=OutputSpec)

    def __post_init__(self) -> None:
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha != 0):
            raise ParameterError(
                f"{{alpha}} must be a finite number other than 0, got {self.alpha}"
            )


class _LoraOp(TensorOp):
    def __init__(
        self, info: TensorInfo, a: np.ndarray, b: np.ndarray, scale: float, where: str
    ) -> None:
        super().__init__(info)
        self.a, self.b, self.scale, self.where = (
            a.astype(np.float64),
            b.astype(np.float64),
            scale,
            where,
        )
        self.squares = 0.0

    def apply(self, where: Block, block: np.ndarray, count: bool = True) -> np.ndarray:
        lead = tuple(
            slice(o, o + s) for o, s in zip(where.origin[:-1], where.shape[:-1], strict=True)
        )
        last = slice(where.origin[-1], where.origin[-1] + where.shape[-1])
        delta = np.matmul(self.a[lead], self.b[:, last]) * self.scale
        if count:
            self.squares += float(np.sum(delta * delta))
        return np.asarray(block.astype(np.float64) + delta).astype(block.dtype)

    def figures(self) -> Figures:
        return LoraFigures(self.where, self.b.shape[0], self.scale, math.sqrt(self.squares))


class _LoraStep(Step):
    command = "lora merge"

    def __init__(
        self,
        plan: dict[str, tuple[np.ndarray, np.ndarray, str]],
        scale: float,
        params: dict[str, Any],
    ) -> None:
        super().__init__(Selection())
        self.plan, self.scale, self._params = plan, scale, params

    def selects(self, info: TensorInfo) -> bool:
        return info.path in self.plan

    def op(self, info: TensorInfo) -> TensorOp | None:
        a, b, where = self.plan[info.path]
        return _LoraOp(info, a, b, self.scale, where)

    def params(self) -> dict[str, Any]:
        return self._params


def merge(request: MergeRequest, path: str | Path) -> TransformResult:
    """BASE (``path``) with the adapter merged into its kernels, written to OUT."""
    src = as_path(path)
    with open_store(src) as store, adapters.Adapter(request.adapter) as adapter:
        slots = _slots(store, src, request.architecture)
        by_path = {t.path: t for t in store.tensors()}
        by_name = {t.name: t for t in store.tensors() if not t.optimizer}
        plan: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
        for e in adapter.entries:
            where = f"{request.adapter.name}: layer {e.index}"
            if e.index >= len(slots):
                raise ParameterError(
                    f"{literal(where)}: the model has {len(slots)} layers with weights: "
                    "the adapter was made for another model"
                )
            slot = slots[e.index]
            label = f"layer {e.index} ({slot.name}, {slot.class_name})"
            if not slot.lora or (slot.target is None and slot.variable is None):
                raise ParameterError(
                    f"{literal(label)} has no LoRA kernel: the adapter was made for another model"
                )
            info = _target(slot, by_path, by_name)
            if info is None:
                raise CorruptError(
                    f"{src}: holds no {slot.target or slot.variable} ({label}'s kernel)"
                )
            if info.quantized:
                raise UnsupportedError(
                    f"{literal(info.name)}: quantized ({info.quantized}): merge the adapter "
                    "into the float model, then quantize"
                )
            if not info.is_float:
                raise UnsupportedError(f"{literal(info.name)}: {info.dtype}, not floating point")
            want = (info.shape[:-1] + (adapter.rank,), (adapter.rank, info.shape[-1]))
            if (e.a.shape, e.b.shape) != want:
                raise ParameterError(
                    f"{literal(label)}: factors {e.a.shape} x {e.b.shape} do not fit "
                    f"{literal(info.name)} {info.shape} (need {want[0]} x {want[1]})"
                )
            a, b = adapter.factors(e)
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                raise CorruptError(f"{literal(where)}: NaN or Inf in the factors")
            plan[info.path] = (a, b, f"{e.index} {slot.name}")
        alpha = float(adapter.rank) if request.alpha is None else float(request.alpha)
        scale = alpha / adapter.rank
        out = request.out.plan(store, src, other_inputs=(request.adapter,))
        params = {
            "adapter": {
                "file": request.adapter.name,
                "digest": None
                if request.out.dry_run
                else digest(request.adapter, request.out.digest),
            },
            "rank": adapter.rank,
            "alpha": alpha,
            "layers": [v[2] for v in plan.values()],
        }
        return pipeline.run(
            store,
            [_LoraStep(plan, scale, params)],
            None if request.out.dry_run else out,
            ["lora", "merge", str(src), str(request.adapter)],
            request.out,
        )


# -- extract ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractRequest:
    """TUNED, the rank (or the energy to keep), the layers to adapt (globs on layer
    names; none: every LoRA-capable layer that changed), where the adapter goes."""

    tuned: Path
    output: Path
    rank: int | None = None
    energy: float | None = None
    targets: tuple[str, ...] = ()
    architecture: Path | None = None
    force: bool = False
    digest: str | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        if (self.rank is None) == (self.energy is None):
            raise ParameterError("give {rank} R or {energy} E, one of them")
        if self.rank is not None and not 0 < self.rank <= 4096:
            raise ParameterError(f"{{rank}} must be in [1, 4096], got {self.rank}")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ParameterError(f"{{energy}} must be in (0, 1], got {self.energy}")
        if not str(self.output).endswith(adapters.SUFFIX):
            raise ParameterError(
                f"{{output}} {literal(str(self.output))}: an adapter is named *{adapters.SUFFIX}"
            )


def _read_whole(store: Store, info: TensorInfo) -> np.ndarray:
    return np.asarray(store.read(info)).reshape(info.shape)


def extract(request: ExtractRequest, path: str | Path) -> LoraExtractResult:
    """An adapter that turns BASE (``path``) into (an approximation of) TUNED."""
    src = as_path(path)
    out = as_path(request.output)
    for p in (src, request.tuned):
        if out.resolve() == p.resolve():
            raise OutputError(f"{out}: is an input of this run: write the adapter elsewhere")
    if out.exists() and not request.force:
        raise OutputError.naming(f"{literal(str(out))}: already exists; use {{force}} to overwrite")
    with open_store(src) as base, open_store(request.tuned) as tuned:
        slots = _slots(base, src, request.architecture)
        by_path = {t.path: t for t in base.tensors()}
        base_by_name = {t.name: t for t in base.tensors() if not t.optimizer}
        tuned_by_name = {t.name: t for t in tuned.tensors() if not t.optimizer}
        for pattern in request.targets:
            if not any(fnmatch.fnmatchcase(s.name, pattern) for s in slots if s.lora):
                raise ParameterError(f"{{target}} {literal(pattern)} matches no LoRA-capable layer")
        work: list[tuple[Any, TensorInfo, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        targets: set[str] = set()
        unchanged: list[tuple[Any, TensorInfo]] = []
        for slot in slots:
            found = _target(slot, by_path, base_by_name) if slot.lora else None
            if found is None:
                continue
            if request.targets and not any(
                fnmatch.fnmatchcase(slot.name, p) for p in request.targets
            ):
                continue
            info = found
            other = tuned_by_name.get(info.name)
            if other is None or other.shape != info.shape:
                raise ParameterError(
                    f"{literal(info.name)}: {'not in' if other is None else 'another shape in'} "
                    f"{request.tuned.name}: TUNED must be a fine-tune of BASE"
                )
            if not info.is_float or info.quantized:
                continue
            targets.add(info.path)
            if info.size > EXTRACT_MAX_ELEMS:
                raise UnsupportedError(
                    f"{literal(info.name)}: {info.size} elements: the exact SVD is limited to "
                    f"{EXTRACT_MAX_ELEMS} (leave the layer out with {{target}})"
                )
            d = _read_whole(tuned, other).astype(np.float64) - _read_whole(base, info)
            if not np.any(d):
                unchanged.append((slot, info))
                continue
            if not np.isfinite(d).all():
                raise CorruptError(f"{literal(info.name)}: NaN or Inf in the difference")
            m = d.reshape(-1, info.shape[-1])
            u, s, vt = np.linalg.svd(m, full_matrices=False)
            work.append((slot, info, m, u, s, vt))
        if not work:
            raise ParameterError(
                "no LoRA-capable kernel differs between BASE and TUNED: nothing to extract"
            )
        rank = request.rank or max(_rank_for(w[4], request.energy or 1.0) for w in work)
        entries: list[tuple[int, np.ndarray, np.ndarray, bool]] = []
        rows: list[LoraKernel] = []
        for slot, info, m, u, s, vt in work:
            r = min(rank, s.size)
            root = np.sqrt(s[:r])
            a = np.zeros((u.shape[0], rank))
            b = np.zeros((rank, vt.shape[1]))
            a[:, :r] = u[:, :r] * root
            b[:r] = root[:, None] * vt[:r]
            dtype = np.float32 if info.dtype != "float64" else np.float64
            a_out, b_out = a.astype(dtype), b.astype(dtype)
            err = float(np.max(np.abs(m - a_out.astype(np.float64) @ b_out.astype(np.float64))))
            total = float(np.sum(s * s))
            kept = float(np.sum(s[:r] * s[:r]) / total) if total else 1.0
            entries.append(
                (
                    slot.index,
                    a_out.reshape(info.shape[:-1] + (rank,)),
                    b_out,
                    slot.class_name == "Embedding",
                )
            )
            rows.append(LoraKernel(slot.index, slot.name, info.name, list(info.shape), kept, err))
        # KerasHub enables LoRA on every layer of a target name and loads an entry for
        # each: the unchanged layers of those names get zero factors.
        names = {r.layer for r in rows}
        for slot, info in unchanged:
            if slot.name in names:
                dtype = np.float32 if info.dtype != "float64" else np.float64
                a_zero = np.zeros(info.shape[:-1] + (rank,), dtype)
                entries.append(
                    (
                        slot.index,
                        a_zero,
                        np.zeros((rank, info.shape[-1]), dtype),
                        slot.class_name == "Embedding",
                    )
                )
                rows.append(
                    LoraKernel(slot.index, slot.name, info.name, list(info.shape), 1.0, 0.0)
                )
        entries.sort(key=lambda e: e[0])
        rows.sort(key=lambda r: r.index)
        # What an adapter cannot carry: other weights that changed.
        not_carried = []
        for info in base.tensors():
            if info.optimizer or info.path in targets or not info.is_float:
                continue
            other = tuned_by_name.get(info.name)
            if other is None or other.shape != info.shape:
                continue
            if any(
                not np.array_equal(
                    np.asarray(blk), np.asarray(tuned.read(other, where)).reshape(np.shape(blk))
                )
                for where, blk in base.blocks(info)
            ):
                not_carried.append(info.name)
        history = Provenance.now(
            command=f"weightcli lora extract {src} {request.tuned}",
            steps=[
                {
                    "command": "lora extract",
                    "rank": rank,
                    "energy": request.energy,
                    "tuned": {
                        "file": request.tuned.name,
                        "digest": digest(request.tuned, request.digest),
                    },
                    "layers": [f"{r.index} {r.layer}" for r in rows],
                }
            ],
            source=src.name,
            source_digest=digest(base.local_copy(), request.digest),
            changed=[r.tensor for r in rows],
            note=request.note,
        ).to_json()
        written = adapters.write(out, rank, entries, history, request.force)
        return LoraExtractResult(str(src), str(out), rank, rows, not_carried, written)


def _rank_for(s: np.ndarray, energy: float) -> int:
    """The smallest rank whose squared singular values keep ``energy`` of the total."""
    sq = s * s
    total = float(np.sum(sq))
    if total == 0:
        return 1
    cum = np.cumsum(sq) / total
    return min(int(s.size), int(np.searchsorted(cum, energy - 1e-12)) + 1)
