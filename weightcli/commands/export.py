"""``export``: the weights of a checkpoint as a new file of another format: today a
``.safetensors`` in Keras's layout (``dense_1/kernel`` as stored) or in PyTorch's
(``dense_1.weight``, transposed and split by ``weightcli.layouts``' rules, per layer
class). Not surgery: a new container, written tensor by tensor (Keras layout: block by
block; PyTorch layout: one whole tensor in memory at a time, for its transpose)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weightcli import layouts
from weightcli.compare import parse_map, rename
from weightcli.digest import digest
from weightcli.errors import OutputError, ParameterError, UsageError, literal
from weightcli.results import ExportResult, ExportRow
from weightcli.select import Selection, apply
from weightcli.stores import open_store
from weightcli.stores.base import Provenance
from weightcli.stores.registry import export_targets, new_file
from weightcli.stores.remote import as_path
from weightcli.tensor import TensorInfo

__all__ = ["ExportRequest", "ExportResult", "run"]


@dataclass(frozen=True)
class ExportRequest:
    """Where, to which format, in which layout, which tensors."""

    output: Path
    to: str = "safetensors"
    layout: str = "keras"
    selection: Selection = field(default_factory=lambda: Selection(floats_only=False))
    force: bool = False
    digest: str | None = None  # how the source is hashed for the history
    maps: tuple[str, ...] = ()  # rename the written names (``diff --map``'s rules)

    def __post_init__(self) -> None:
        for m in self.maps:
            parse_map(m)
        targets = export_targets()
        if self.to not in targets:
            raise ParameterError(
                f"{{to}} must be one of {', '.join(targets)}, got {literal(self.to)}"
            )
        if self.layout not in ("keras", "torch"):
            raise ParameterError(f"{{layout}} must be keras or torch, got {literal(self.layout)}")
        suffix = targets[self.to]
        if not str(self.output).endswith(suffix):
            raise ParameterError(
                f"{{output}} {literal(str(self.output))}: a {self.to} file is named *{suffix}"
            )


def _chosen(tensors: list[TensorInfo], sel: Selection, has_config: bool) -> list[TensorInfo]:
    if sel.select or sel.exclude or sel.layer_types or sel.kinds:
        chosen = apply(tensors, sel, has_config)
    else:
        chosen = [t for t in tensors if sel.include_optimizer or not t.optimizer]
    return [t for t in chosen if t.dtype != "string"]


def run(request: ExportRequest, path: str | Path) -> ExportResult:
    started = time.perf_counter()
    src = as_path(path)
    out = as_path(request.output)
    if out.exists() and not request.force:
        raise OutputError.naming(f"{literal(str(out))}: already exists; use {{force}} to overwrite")
    with open_store(src) as store:
        chosen = _chosen(store.tensors(), request.selection, store.meta.has_config)
        if not chosen:
            raise UsageError("the selection matches no tensor")
        plan = [
            (t, layouts.rule_for(t) if request.layout == "torch" else None) for t in chosen
        ]  # every rule found (or refused) before a byte is written
        rows: list[ExportRow] = []
        maps = [parse_map(m) for m in request.maps]
        writer = new_file(request.to, out, request.force)
        try:
            packs: dict[str, dict[int, tuple[TensorInfo, np.ndarray]]] = {}
            for t, rule in plan:
                if rule is None:
                    name = rename(t.name, maps)
                    writer.add(name, t.dtype, t.shape, (b for _, b in store.blocks(t)))
                    rows.append(ExportRow(t.name, [name], t.shape, [t.shape], "as stored"))
                    continue
                arrays = rule.to_torch(np.asarray(store.read(t)))
                names = [rename(n, maps) for n in rule.torch_names(t)]
                if rule.pack is not None:  # a part of one PyTorch tensor (in_proj_weight)
                    index, count = rule.pack
                    parts = packs.setdefault(names[0], {})
                    parts[index] = (t, arrays[0])
                    if len(parts) == count:  # complete: written as one tensor, in order
                        chunks = [parts[k][1] for k in range(count)]
                        shape = (sum(c.shape[0] for c in chunks), *chunks[0].shape[1:])
                        writer.add(names[0], t.dtype, shape, chunks)
                        del packs[names[0]]
                    rows.append(ExportRow(t.name, names, t.shape, [arrays[0].shape], rule.what))
                    continue
                for name, a in zip(names, arrays, strict=True):
                    writer.add(name, t.dtype, a.shape, [a])
                rows.append(ExportRow(t.name, names, t.shape, [a.shape for a in arrays], rule.what))
            if packs:
                name, parts = next(iter(packs.items()))
                raise UsageError(
                    f"{name} packs query, key and value: select all three of "
                    f"{', '.join(p[0].name.rsplit('/', 2)[0] for p in parts.values())} "
                    "(or none)"
                )
            entry = Provenance.now(
                command=f"weightcli export {src} --to {request.to} --layout {request.layout}",
                steps=[{"command": "export", "to": request.to, "layout": request.layout}],
                source=src.name,
                source_digest=digest(store.local_copy(), request.digest),
                changed=[],
            ).to_json()
            writer.commit([*store.meta.history, entry], request.layout)
        except BaseException:
            writer.abort()
            raise
        return ExportResult(
            str(path), str(out), request.to, request.layout, rows, writer.bytes_written,
            time.perf_counter() - started,
        )  # fmt: skip
