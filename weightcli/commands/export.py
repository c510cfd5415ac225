"""``export``: the weights of a checkpoint as a new file of another format: a
``.safetensors`` in Keras's layout (``dense_1/kernel`` as stored) or in PyTorch's
(``dense_1.weight``, transposed and split by ``weightcli.layouts``' rules, per layer
class). Not surgery: a new container, written tensor by tensor (Keras layout: block by
block; PyTorch layout: one whole tensor in memory at a time, for its transpose).

``--to tflite`` is the tutorials' converter route instead: TensorFlow's converter on the
whole model (float32, or full int8 calibrated on the user's samples), the history added
by the ``.tflite`` writer, and with ``check`` the interpreter's outputs compared with the
model's own on the same inputs."""

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
from weightcli.stores.remote import as_path, is_url
from weightcli.tensor import TensorInfo

__all__ = ["ExportRequest", "ExportResult", "run"]


# Formats made by running a framework's converter on the whole model (the ``tf`` extra),
# not tensor by tensor: name -> the output suffix.
CONVERTED = {"tflite": ".tflite"}
# --check's default tolerance: float32 kernels differ in rounding only; int8 arithmetic
# moves outputs by a few quantization steps.
CHECK_ATOL = {False: 1e-4, True: 0.1}


@dataclass(frozen=True)
class ExportRequest:
    """Where, to which format, in which layout, which tensors; for a converted format
    (``CONVERTED``), ``int8`` with ``calibration`` samples, and ``check`` (outputs of
    OUT against IN's on the calibration samples, or seeded random inputs) within
    ``atol``."""

    output: Path
    to: str = "safetensors"
    layout: str = "keras"
    selection: Selection = field(default_factory=lambda: Selection(floats_only=False))
    force: bool = False
    digest: str | None = None  # how the source is hashed for the history
    maps: tuple[str, ...] = ()  # rename the written names (``diff --map``'s rules)
    int8: bool = False
    calibration: Path | None = None
    check: bool = False
    atol: float | None = None

    def __post_init__(self) -> None:
        for m in self.maps:
            parse_map(m)
        targets = {**export_targets(), **CONVERTED}
        if self.to in CONVERTED:
            sel = self.selection
            if self.layout != "keras" or self.maps:
                raise ParameterError(
                    f"{{to}} {self.to} converts the whole model: give no {{layout}} or {{map}}"
                )
            if sel.select or sel.exclude or sel.layer_types or sel.kinds or sel.include_optimizer:
                raise ParameterError(
                    f"{{to}} {self.to} converts the whole model: give no selection"
                )
            if self.int8 and self.calibration is None:
                raise ParameterError(
                    "{int8} calibrates the activations' ranges: give {calibration} FILE "
                    "(.npy of sample inputs, or .npz with one array per input)"
                )
            if self.atol is not None and not self.check:
                raise ParameterError("{atol} is the tolerance of {check}: give it too")
            if self.atol is not None and not (self.atol >= 0):
                raise ParameterError("{atol} must be 0 or more")
        elif self.int8 or self.calibration is not None or self.check or self.atol is not None:
            raise ParameterError(
                f"{{int8}}, {{calibration}}, {{check}} and {{atol}} belong to a converted "
                f"format ({', '.join(CONVERTED)}), not to {literal(self.to)}"
            )
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
    if request.to in CONVERTED:
        return _converted(request, src, out, started)
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


def _converted(request: ExportRequest, src: Path, out: Path, started: float) -> ExportResult:
    """The converter's file, given weightcli's history by the format's own writer, and
    (``check``) run by its interpreter against the model on the same inputs."""
    from weightcli import framework
    from weightcli.stores.temps import make_file, remove

    with open_store(src) as store:
        if is_url(src) or is_url(out):
            raise UsageError("export --to tflite works on local paths (download the model first)")
        calibration = None
        if request.calibration is not None:
            calibration = _samples(request.calibration)
        converted = framework.convert_tflite(src, store, request.int8, calibration)
        entry = Provenance.now(
            command=f"weightcli export {src} --to {request.to}"
            + (" --int8" if request.int8 else ""),
            steps=[{"command": "export", "to": request.to, "int8": request.int8}],
            source=src.name,
            source_digest=digest(store.local_copy(), request.digest),
            changed=[],
        ).to_json()
        history = [*store.meta.history, entry]
    raw = make_file(out.parent if str(out.parent) else None, f".{out.name}.converted.")
    try:
        raw.write_bytes(converted)
        with open_store(raw) as made:
            patcher = made.patch(out, overwrite=request.force)
            try:
                patcher.set_history(history)
                patcher.commit()
            except BaseException:
                patcher.abort()
                raise
            rows = [
                ExportRow(t.name, [t.name], t.shape, [t.shape], "converted") for t in made.tensors()
            ]
    finally:
        remove(raw)
    check = None
    if request.check:
        atol = request.atol if request.atol is not None else CHECK_ATOL[request.int8]
        check = framework.check_converted(src, out, calibration, atol)
    return ExportResult(
        str(src), str(out), request.to, "keras", rows, out.stat().st_size,
        time.perf_counter() - started, check,
    )  # fmt: skip


def _samples(path: Path) -> dict[str, np.ndarray]:
    """Calibration inputs: a .npy (one input) or a .npz (one array per input, by name),
    samples along the first axis."""
    from weightcli.arrays import load_any

    data = load_any(path)
    arrays = {"input": data} if isinstance(data, np.ndarray) else {k: data[k] for k in data.files}
    if not arrays or any(a.ndim == 0 or len(a) == 0 for a in arrays.values()):
        raise UsageError(f"{literal(path)}: no samples (an array of inputs, samples first)")
    if len({len(a) for a in arrays.values()}) != 1:
        raise UsageError(f"{literal(path)}: its arrays hold different numbers of samples")
    return arrays
