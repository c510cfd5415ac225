"""The public Python API: every command as a function, on top of ``weightcli.commands``.

    import weightcli

    with weightcli.open("model.h5") as ckpt:
        for t in ckpt.tensors():
            print(t.name, t.shape, t.dtype)
        kernel = ckpt.array("dense_1/kernel")        # a numpy array

    result = weightcli.scale("model.h5", 0.5, output="half.h5", select=["dense_1"])
    print(result.bytes_written, [c.info.name for c in result.changes])

    d = weightcli.diff("model.h5", "half.h5", atol=1e-6)
    print(d.equal, d.verdict, d.exit_code)

Every function raises ``weightcli.errors.WeightcliError`` (a subclass per kind of
problem) for what the caller must fix, and returns a typed result (see
``weightcli.results``) with ``exit_code`` and ``to_json()``. Nothing here prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Unpack

import numpy as np

from weightcli import recipe
from weightcli.commands import assign as assign_cmd
from weightcli.commands import diff as diff_cmd
from weightcli.commands import dump as dump_cmd
from weightcli.commands import export as export_cmd
from weightcli.commands import freeze as freeze_cmd
from weightcli.commands import inspect as inspect_cmd
from weightcli.commands import merge as merge_cmd
from weightcli.commands import reinit as reinit_cmd
from weightcli.commands import report as report_cmd
from weightcli.commands import transform as transform_cmd
from weightcli.commands import transplant as transplant_cmd
from weightcli.commands import verify as verify_cmd
from weightcli.distribution import EXACT_SIDE
from weightcli.errors import ParameterError
from weightcli.params import OUTPUT_FIELDS, OutputKeywords, OutputSpec, take
from weightcli.results import (
    DiffResult,
    DumpResult,
    ExportResult,
    FreezeResult,
    InspectResult,
    LoraExtractResult,
    ReportResult,
    StripResult,
    TransformResult,
    TransplantResult,
    VerifyResult,
)
from weightcli.select import Selection, selection
from weightcli.steps import ClipStep, ClusterStep, PruneStep, QuantizeStep, ScaleStep, Step
from weightcli.stores import Store, open_store
from weightcli.stores.remote import as_path
from weightcli.tensor import TensorInfo

PathLike = str | Path


class WriteKeywords(OutputKeywords, total=False):
    """The keywords of a transform: where and how to write (``OutputKeywords``), and
    which tensors (``select``, ``exclude``: name globs; ``layer_types``: Keras classes;
    ``kinds``: kernel, bias, ...; ``include_optimizer``)."""

    select: Sequence[str]
    exclude: Sequence[str]
    layer_types: Sequence[str]
    kinds: Sequence[str]
    include_optimizer: bool


SELECTION_FIELDS = ("select", "exclude", "layer_types", "kinds", "include_optimizer")


def _output(keywords: Mapping[str, Any], function: str) -> OutputSpec:
    return OutputSpec(**take(keywords, OUTPUT_FIELDS, function))


def _groups(keywords: Mapping[str, Any], function: str) -> tuple[OutputSpec, Selection]:
    """A transform's keywords as its two parameter groups."""
    given = take(keywords, OUTPUT_FIELDS + SELECTION_FIELDS, function)
    out = OutputSpec(**{k: v for k, v in given.items() if k in OUTPUT_FIELDS})
    return out, selection(**{k: v for k, v in given.items() if k in SELECTION_FIELDS})


__all__ = [
    "Checkpoint",
    "apply",
    "assign",
    "clip",
    "cluster",
    "diff",
    "dump",
    "export",
    "freeze",
    "inspect",
    "lora_extract",
    "lora_merge",
    "merge",
    "open",
    "prune",
    "quantize",
    "reinit",
    "report",
    "report_page",
    "scale",
    "selection",
    "strip",
    "transplant",
    "verify",
]


class Checkpoint:
    """A checkpoint opened for reading: its tensors by canonical name, read as numpy arrays.

    Use it as a context manager (or call ``close``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.path = store.path
        self.meta = store.meta

    def tensors(self) -> list[TensorInfo]:
        """Every tensor (model weights and optimizer state), in file order."""
        return self.store.tensors()

    def array(self, name: str) -> np.ndarray:
        """The whole tensor named ``name`` (an error names the nearest names)."""
        return self.store.read(self.store.tensor(name))

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(path: PathLike) -> Checkpoint:  # noqa: A001 - the natural name, as in io.open
    """Open a checkpoint of any supported format (detected from its content)."""
    return Checkpoint(open_store(path))


def inspect(
    path: PathLike,
    *,
    stats: bool = True,
    fail_on_nonfinite: bool = False,
    select: Sequence[str] = (),
    exclude: Sequence[str] = (),
    layer_types: Sequence[str] = (),
    kinds: Sequence[str] = (),
    include_optimizer: bool = False,
) -> InspectResult:
    """What a checkpoint holds: tensors with metadata and (with ``stats``) statistics."""
    request = inspect_cmd.InspectRequest(
        selection(select, exclude, layer_types, kinds, include_optimizer, floats_only=False),
        with_stats=stats,
        fail_on_nonfinite=fail_on_nonfinite,
    )
    return inspect_cmd.run(request, path)


def report(
    path: PathLike,
    *,
    against: PathLike | None = None,
    maps: Sequence[str] = (),
    match_by: str = "name",
    select: Sequence[str] = (),
    exclude: Sequence[str] = (),
    layer_types: Sequence[str] = (),
    kinds: Sequence[str] = (),
    include_optimizer: bool = False,
    exact_side: int = EXACT_SIDE,
) -> ReportResult:
    """Everything ``weightcli report`` draws: histograms, spectral figures (exact for
    kernels whose smaller side is at most ``exact_side``), flags and, with ``against``,
    the change from that reference. ``report_page`` makes the HTML."""
    chosen = selection(select, exclude, layer_types, kinds, include_optimizer, floats_only=False)
    request = report_cmd.ReportRequest(
        chosen,
        against=against,
        pairing=diff_cmd.DiffRequest(chosen, maps=tuple(maps), match_by=match_by, nan_equal=True),
        exact_side=exact_side,
    )
    return report_cmd.run(request, path)


def report_page(result: ReportResult) -> str:
    """The self-contained HTML page of a ``report`` (write it where you like)."""
    from weightcli.page import render

    return render(result)


def _transform(
    path: PathLike, steps: Sequence[Step], command: str, out: OutputSpec
) -> TransformResult:
    request = transform_cmd.TransformRequest(steps=tuple(steps), command=command, out=out)
    return transform_cmd.run(request, path)


def scale(
    path: PathLike,
    factor: float | None = None,
    *,
    by_type: Mapping[str, float] | None = None,
    by_layer: Mapping[str, float] | None = None,
    **keywords: Unpack[WriteKeywords],
) -> TransformResult:
    """Multiply the selected tensors by ``factor`` (or per layer class / layer glob) and
    write the patched copy to ``output``."""
    out, sel = _groups(keywords, "scale")
    step = ScaleStep(sel, factor=factor, by_type=dict(by_type or {}), by_layer=dict(by_layer or {}))
    return _transform(path, [step], "scale", out)


def clip(
    path: PathLike,
    *,
    min: float | None = None,  # noqa: A002 - the parameter's documented name
    max: float | None = None,  # noqa: A002
    abs_max: float | None = None,
    percentile: float | None = None,
    sigma: float | None = None,
    nonfinite: str = "keep",
    **keywords: Unpack[WriteKeywords],
) -> TransformResult:
    """Clip the selected tensors to bounds and/or repair NaN/Inf (``nonfinite``)."""
    out, sel = _groups(keywords, "clip")
    step = ClipStep(
        sel,
        min=min,
        max=max,
        abs_max=abs_max,
        percentile=percentile,
        sigma=sigma,
        nonfinite=nonfinite,
    )
    return _transform(path, [step], "clip", out)


def quantize(
    path: PathLike,
    *,
    bits: int | None = None,
    scheme: str | None = None,
    granularity: str | None = None,
    axis: int | None = None,
    dtype: str | None = None,
    **keywords: Unpack[WriteKeywords],
) -> TransformResult:
    """Fake-quantize the selected tensors (``bits`` 8, symmetric, per-channel by default),
    or store them as ``dtype`` (float16, bfloat16): one or the other."""
    out, sel = _groups(keywords, "quantize")
    step = QuantizeStep(
        sel,
        bits=bits,
        scheme=scheme,
        granularity=granularity,
        axis=axis,
        dtype=dtype,
    )
    return _transform(path, [step], "quantize", out)


def prune(
    path: PathLike,
    sparsity: float | None = None,
    *,
    scope: str = "layer",
    by_layer: Mapping[str, float] | None = None,
    pattern: tuple[int, int] | None = None,
    **keywords: Unpack[WriteKeywords],
) -> TransformResult:
    """Zero the smallest-magnitude weights: ``sparsity`` of each selected tensor
    (``scope="global"``: one threshold over all), or N:M structured sparsity
    (``pattern=(2, 4)``)."""
    out, sel = _groups(keywords, "prune")
    step = PruneStep(
        sel, sparsity=sparsity, scope=scope, by_layer=dict(by_layer or {}), pattern=pattern
    )
    return _transform(path, [step], "prune", out)


def cluster(
    path: PathLike,
    clusters: int = 16,
    *,
    per_channel: bool = False,
    init: str = "kmeans++",
    seed: int | None = None,
    **keywords: Unpack[WriteKeywords],
) -> TransformResult:
    """Leave each selected tensor (or channel) at most ``clusters`` distinct values
    (exact 1-D k-means from ``init``: kmeans++, linear or density)."""
    out, sel = _groups(keywords, "cluster")
    step = ClusterStep(sel, clusters=clusters, per_channel=per_channel, init=init, seed=seed)
    return _transform(path, [step], "cluster", out)


def apply(
    recipe_path: PathLike, path: PathLike, **keywords: Unpack[OutputKeywords]
) -> TransformResult:
    """Apply a TOML recipe's steps in one pass and one write."""
    steps = recipe.load(as_path(recipe_path))
    return _transform(path, steps, "apply", _output(keywords, "apply"))


def diff(
    a: PathLike,
    b: PathLike,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    nan_equal: bool = False,
    structure: bool = False,
    ignore_dtype: bool = False,
    match_by: str = "name",
    maps: Sequence[str] = (),
    select: Sequence[str] = (),
    exclude: Sequence[str] = (),
    include_optimizer: bool = False,
) -> DiffResult:
    """Compare two checkpoints tensor by tensor (numpy ``isclose`` tolerances; B is the
    reference). ``maps`` renames A's tensors (``"enc_*=encoder_*"``)."""
    request = diff_cmd.DiffRequest(
        selection=selection(select, exclude, (), (), include_optimizer, floats_only=False),
        maps=tuple(maps),
        atol=atol,
        rtol=rtol,
        nan_equal=nan_equal,
        structure=structure,
        ignore_dtype=ignore_dtype,
        match_by=match_by,
    )
    return diff_cmd.run(request, a, b)


def transplant(
    source: PathLike,
    target: PathLike,
    *,
    maps: Sequence[str] = (),
    match_by: str = "name",
    select: Sequence[str] = (),
    exclude: Sequence[str] = (),
    source_select: Sequence[str] = (),
    strict: bool = False,
    include_optimizer: bool = False,
    from_ema: bool = False,
    layout: str = "keras",
    **keywords: Unpack[OutputKeywords],
) -> TransplantResult:
    """Copy SOURCE's weights into a patched copy of TARGET (matched by name after
    ``maps``, or by model order), written to ``output`` in TARGET's format."""
    request = transplant_cmd.TransplantRequest(
        source=as_path(source),
        selection=selection(select, exclude, floats_only=False),
        source_select=tuple(source_select),
        maps=tuple(maps),
        match_by=match_by,
        strict=strict,
        include_optimizer=include_optimizer,
        from_ema=from_ema,
        layout=layout,
        out=_output(keywords, "transplant"),
    )
    return transplant_cmd.run(request, target)


class MergeKeywords(OutputKeywords, total=False):
    """A merge method's parameters (``commands.merge.MethodParams``: ``weights``,
    ``decay``, ``lam``, ``density``, ``gamma``, ``epsilon``, ``t``, ``seed``,
    ``normalize``, ``rescale``) and the output keywords."""

    weights: Sequence[float]
    decay: float
    lam: float
    density: float
    gamma: float
    epsilon: float
    t: float
    seed: int
    normalize: bool
    rescale: bool


def merge(
    inputs: Sequence[PathLike] = (),
    *,
    method: str = "mean",
    base: PathLike | None = None,
    config: PathLike | None = None,
    maps: Sequence[str] = (),
    select: Sequence[str] = (),
    exclude: Sequence[str] = (),
    **keywords: Unpack[MergeKeywords],
) -> TransformResult:
    """Merge checkpoints into a copy of the first input (or of ``base``), or as the
    merge file ``config`` says; the methods: ``weightcli.transforms.merge``."""
    if (config is None) == (not inputs):
        raise ParameterError("give the inputs, or a merge file as {config}, one of them")
    given = take(keywords, OUTPUT_FIELDS + merge_cmd.METHOD_FIELDS, "merge")
    params = {k: v for k, v in given.items() if k in merge_cmd.METHOD_FIELDS}
    params["weights"] = tuple(params.get("weights", ()))
    request = merge_cmd.MergeRequest(
        others=tuple(as_path(p) for p in inputs[1:]),
        method=method,
        base=as_path(base) if base is not None else None,
        params=merge_cmd.MethodParams(**params),
        config=config is not None,
        selection=selection(select, exclude),
        maps=tuple(maps),
        out=OutputSpec(**{k: v for k, v in given.items() if k in OUTPUT_FIELDS}),
    )
    return merge_cmd.run(request, config if config is not None else inputs[0])


def assign(
    path: PathLike,
    values: Mapping[str, float | PathLike] | None = None,
    *,
    from_npz: PathLike | None = None,
    **keywords: Unpack[OutputKeywords],
) -> TransformResult:
    """``set``: assign tensors a constant, a ``.npy`` file's array, or every array of a
    ``.npz`` keyed by canonical names (``from_npz``)."""
    request = assign_cmd.SetRequest(
        assignments=tuple(
            (name, v if isinstance(v, float | int) else str(v))
            for name, v in (values or {}).items()
        ),
        from_npz=as_path(from_npz) if from_npz is not None else None,
        out=_output(keywords, "assign"),
    )
    return assign_cmd.run(request, path)


def dump(
    path: PathLike,
    output: PathLike,
    *,
    layout: str = "npz",
    max_bytes: int = dump_cmd.DEFAULT_MAX_BYTES,
    force: bool = False,
    select: Sequence[str] = (),
    exclude: Sequence[str] = (),
    include_optimizer: bool = False,
    dequantize: bool = False,
) -> DumpResult:
    """The selected tensors as a ``.npz`` (``layout="npz"``) or a folder of ``.npy``
    files (``"npy-dir"``), keyed by canonical name (``dequantize``: quantized weights as
    the floats they stand for)."""
    request = dump_cmd.DumpRequest(
        output=as_path(output),
        selection=selection(
            select, exclude, include_optimizer=include_optimizer, floats_only=False
        ),
        layout=layout,
        max_bytes=max_bytes,
        force=force,
        dequantize=dequantize,
    )
    return dump_cmd.run(request, path)


def export(
    path: PathLike,
    output: PathLike,
    *,
    to: str = "safetensors",
    layout: str = "keras",
    force: bool = False,
    digest: str | None = None,
    maps: Sequence[str] = (),
    select: Sequence[str] = (),
    exclude: Sequence[str] = (),
    include_optimizer: bool = False,
) -> ExportResult:
    """Write the weights as a new ``.safetensors`` file, in Keras's layout (as stored)
    or PyTorch's (``layout="torch"``: names and layouts by layer class)."""
    request = export_cmd.ExportRequest(
        output=as_path(output),
        to=to,
        layout=layout,
        selection=selection(
            select, exclude, include_optimizer=include_optimizer, floats_only=False
        ),
        force=force,
        digest=digest,
        maps=tuple(maps),
    )
    return export_cmd.run(request, path)


def strip(path: PathLike, **keywords: Unpack[OutputKeywords]) -> StripResult:
    """The plain model of a model saved with TFMOT's training wrappers (pruning,
    clustering, quantization-aware training): Keras loads it without TFMOT."""
    from weightcli.commands import strip as strip_cmd

    return strip_cmd.run(strip_cmd.StripRequest(out=_output(keywords, "strip")), path)


def lora_merge(
    base: PathLike,
    adapter: PathLike,
    *,
    alpha: float | None = None,
    architecture: PathLike | None = None,
    **keywords: Unpack[OutputKeywords],
) -> TransformResult:
    """``lora merge``: a KerasHub LoRA adapter merged into ``base``'s kernels."""
    from weightcli.commands import lora as lora_cmd

    request = lora_cmd.MergeRequest(
        adapter=as_path(adapter),
        alpha=alpha,
        architecture=as_path(architecture) if architecture is not None else None,
        out=_output(keywords, "lora merge"),
    )
    return lora_cmd.merge(request, base)


def lora_extract(
    base: PathLike,
    tuned: PathLike,
    output: PathLike,
    *,
    rank: int | None = None,
    energy: float | None = None,
    targets: Sequence[str] = (),
    architecture: PathLike | None = None,
    force: bool = False,
    digest: str | None = None,
    note: str | None = None,
) -> LoraExtractResult:
    """``lora extract``: a KerasHub LoRA adapter (``output``, ``*.lora.h5``) from
    ``tuned`` - ``base``, by truncated SVD per kernel."""
    from weightcli.commands import lora as lora_cmd

    request = lora_cmd.ExtractRequest(
        tuned=as_path(tuned),
        output=Path(output),
        rank=rank,
        energy=energy,
        targets=tuple(targets),
        architecture=as_path(architecture) if architecture is not None else None,
        force=force,
        digest=digest,
        note=note,
    )
    return lora_cmd.extract(request, base)


def reinit(
    path: PathLike,
    initializer: str,
    *,
    select: Sequence[str] = (),
    exclude: Sequence[str] = (),
    kinds: Sequence[str] = (),
    seed: int = 0,
    params: Mapping[str, float] | None = None,
    **keywords: Unpack[OutputKeywords],
) -> TransformResult:
    """Draw the selected tensors afresh from a Keras initialiser (``params``: its
    arguments, e.g. ``{"stddev": 0.02}``)."""
    request = reinit_cmd.ReinitRequest(
        initializer=initializer,
        selection=selection(select, exclude, (), kinds, floats_only=True),
        seed=seed,
        params=tuple((params or {}).items()),
        out=_output(keywords, "reinit"),
    )
    return reinit_cmd.run(request, path)


def freeze(
    path: PathLike,
    layers: Sequence[str],
    *,
    unfreeze: bool = False,
    **keywords: Unpack[OutputKeywords],
) -> FreezeResult:
    """Mark layers (name globs) non-trainable (or trainable, ``unfreeze``) in the stored
    model config; no weight changes."""
    request = freeze_cmd.FreezeRequest(
        layers=tuple(layers),
        unfreeze=unfreeze,
        out=_output(keywords, "freeze"),
    )
    return freeze_cmd.run(request, path)


def verify(
    path: PathLike,
    *,
    reference: PathLike | None = None,
    architecture: PathLike | None = None,
    no_load: bool = False,
    seed: int = 0,
    batch: int = 4,
    input_file: PathLike | None = None,
    atol: float = 1e-8,
    rtol: float = 1e-5,
    min_cosine: float | None = None,
    trust_code: bool = False,
) -> VerifyResult:
    """Static checks, reference checks, and (unless ``no_load``) load and run the model
    (needs the ``tf`` extra). A file's own code (Lambda bytecode, a SavedModel's graph)
    runs only with ``trust_code``."""
    request = verify_cmd.VerifyRequest(
        reference=as_path(reference) if reference is not None else None,
        architecture=as_path(architecture) if architecture is not None else None,
        no_load=no_load,
        seed=seed,
        batch=batch,
        input_file=as_path(input_file) if input_file is not None else None,
        atol=atol,
        rtol=rtol,
        min_cosine=min_cosine,
        trust_code=trust_code,
    )
    return verify_cmd.run(request, path)
