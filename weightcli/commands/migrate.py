"""``migrate``: a model saved by one Keras made loadable by the other, offline.

The stored config is rewritten by ``weightcli.migrate``'s table of per-class rules and
the file is otherwise a surgery copy: every tensor's bytes, the optimizer state and
every other attribute stay as they are (``Patcher.set_config``). Today: a legacy
full-model ``.h5`` (Keras 2 / tf.keras, or Keras 3's legacy writer) to the same format
for the other line; ``.keras`` archives and SavedModels are refused with what to do.

``check`` (the ``tf`` extra) loads IN with the Keras that wrote it and OUT with the
target's, runs both on the same seeded random inputs and compares the outputs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightcli import migrate as rules
from weightcli import pipeline
from weightcli.batch import Item
from weightcli.errors import CorruptError, ParameterError, UnsupportedError, literal
from weightcli.params import OutputSpec
from weightcli.results import MigrateResult, name_list
from weightcli.stores import keras3_layout, open_store
from weightcli.stores.archive import write_new_archive
from weightcli.stores.base import Format, Patcher
from weightcli.stores.hdf5 import write_legacy_model
from weightcli.stores.remote import as_path

__all__ = ["MigrateRequest", "run"]


@dataclass(frozen=True)
class MigrateRequest:
    """The Keras to load OUT (None: the other line than IN's writer), whether to load
    and run both (``check``, with ``atol``), where outputs go."""

    target: str | None = None
    check: bool = False
    atol: float = 1e-5
    outputs: tuple[tuple[Path, Path], ...] = ()  # a batch's mirrored outputs
    out: OutputSpec = field(default_factory=OutputSpec)
    # A Python file of the model's custom classes (imported: it is the user's own code);
    # their layers are carried as they are, and --check loads with them.
    custom_objects: Path | None = None

    def __post_init__(self) -> None:
        self.out.refuse("allow_nonfinite", "compress", command="migrate")
        if self.target is not None and self.target not in rules.TARGETS:
            raise ParameterError(f"{{target}} must be one of {', '.join(rules.TARGETS)}")
        if self.check and self.out.dry_run:
            raise ParameterError("{check} loads the output: a {dry_run} writes none")
        if not (math.isfinite(self.atol) and self.atol >= 0):
            raise ParameterError(f"{{atol}} must be a number >= 0, got {self.atol}")

    def output_for(self, src: Path) -> Path | None:
        return dict(self.outputs).get(src)


def run(request: MigrateRequest, path: str | Path) -> MigrateResult:
    try:
        return _run(request, path)
    except RecursionError:  # a config nested past Python's limit: a hostile file
        raise CorruptError(f"{path}: its model config is nested too deeply") from None


def _run(request: MigrateRequest, path: str | Path) -> MigrateResult:
    src = as_path(path)
    with open_store(src) as store:
        config = getattr(store, "model_config", None)
        meta = store.meta
        native = meta.keras3_model  # config.json and Keras 3's weights layout
        # another full model whose weights the store groups by layer (a tf.keras
        # SavedModel, from its keras_metadata.pb)
        grouped = None if meta.legacy_full_model or native else store.keras_layers()
        saved = grouped is not None
        if (meta.legacy_full_model or native) and not isinstance(config, dict):
            what = "config.json" if native else "model_config"
            raise CorruptError(f"{src}: its {what} is not a model config (damaged?)")
        if not (meta.legacy_full_model or native or saved) or not isinstance(config, dict):
            raise UnsupportedError(
                f"{src}: a {meta.format_label}: migrate reads a full model: a legacy .h5 "
                "(model.save('m.h5')), a .keras archive, a Keras 3 model folder, or a "
                "tf.keras SavedModel (with its keras_metadata.pb)"
            )
        writer = store.keras_writer()
        from weightcli.framework import python_code_in

        code = python_code_in(config)
        if code:
            raise UnsupportedError(
                f"{src}: layer(s) {name_list(code)} are Lambda layers (Python bytecode in the "
                "file): weightcli never runs or copies it; rebuild those layers in code"
            )
        line = rules.migrated_for(meta.history) or rules.writer_line(writer)
        if native and line is None:
            line = "keras3"  # a .keras weightcli wrote from a legacy file names no writer
        if line == "keras1":
            raise UnsupportedError(
                f"{src}: written by Keras 1: neither Keras line loads it, and its weights "
                "are laid out as Keras 1's (an LSTM's 12 gate arrays), which migrate does "
                "not rewrite (it carries weights byte for byte); load and re-save it with "
                "Keras 2.2 (which converts Keras 1 files), then migrate that"
            )
        target = request.target or ("keras3" if line != "keras3" else "tf-keras")
        if line == target:
            raise ParameterError(
                f"{literal(str(src))} was written by {writer or 'Keras 3'}: it is "
                f"already in {target}'s form (give {{target}} the other line)"
            )
        custom: frozenset[str] = frozenset()
        if request.custom_objects is not None:
            from weightcli.framework import import_custom_objects, registered_names

            custom = registered_names(import_custom_objects(request.custom_objects))
        source_config = keras3_layout.legacy_config(config) if native else config
        new, changes = rules.translate(source_config, target, custom)
        mirrored = request.output_for(src)  # a batch's output: named by weightcli
        if mirrored is not None and (native or saved):
            # the other layout's file: a Keras 3 model to .h5, a SavedModel to .keras
            mirrored = mirrored.with_name(
                (mirrored.stem if native and mirrored.suffix else mirrored.name)
                + (".h5" if native else ".keras")
            )
        raw = mirrored or request.out.output
        archive = str(raw or "").lower().endswith(".keras")
        if saved and not archive and not (raw is None and request.out.dry_run):
            raise ParameterError(
                f"{literal(str(raw))}: a tf.keras SavedModel is migrated to a Keras 3 "
                "archive: name OUT *.keras"
            )
        if archive and target != "keras3":
            raise ParameterError(
                f"{literal(str(raw))}: a .keras archive is Keras 3's format: give an .h5 "
                "name for tf_keras"
            )
        renamed = {c.old: c.new for c in changes if c.rule == "slash-names"}
        if renamed and not archive:
            first = next(iter(renamed))
            raise UnsupportedError(
                f"layer {literal(first)}: Keras 3 refuses '/' in a layer name, and a legacy "
                ".h5 files each layer's weights under its name: write OUT.keras (Keras 3's "
                "own layout) instead"
            )
        tensors = [t for t in store.tensors()]
        # Where each weight goes when the layout changes: Keras 3's (legacy .h5 to
        # .keras) or the legacy one (.keras to .h5); None: the same container, patched.
        placed: dict[str, str] | None = None
        names: dict[str, str] = {}
        layers: list[tuple[str, list[tuple[str, str]]]] = []
        if archive:
            grouped = grouped or store.keras_layers()
            if grouped is None:
                raise UnsupportedError(f"{src}: its weights are not grouped by layer")
            placed, names = keras3_layout.layout(new, grouped, renamed)
        elif native:
            layers = keras3_layout.legacy_weights(
                config, [t.path for t in tensors if not t.optimizer]
            )
        out = request.out.plan(
            store,
            src,
            mirrored,
            mkdirs=bool(request.outputs),
            as_format=(
                (Format.KERAS_ARCHIVE, "Keras archive (.keras)")
                if archive
                else (Format.KERAS_H5, "Keras legacy HDF5 (full model)")
                if native
                else None
            ),
        )
        result = MigrateResult(
            str(src),
            None if request.out.dry_run else str(out),
            line,
            target,
            [c.to_json() for c in changes],
            len([t for t in tensors if not t.optimizer]),
            [t.name for t in tensors if t.optimizer],
        )
        if request.out.dry_run:
            return result
        assert out is not None

        def steps() -> list[dict[str, Any]]:
            return [
                {
                    "command": "migrate",
                    "from": line,
                    "for": target,
                    "changes": [c.to_json() for c in changes],
                    "dropped": result.dropped,
                }
            ]

        def edit(patcher: Patcher) -> list[dict[str, Any]]:
            if changes:
                patcher.set_config(new)
            # The compile config and optimizer state are the writer's (tf.keras's loss
            # and optimizer configs): the other Keras refuses them when it compiles on load.
            result.dropped = patcher.drop_training()
            return steps()

        command = f"weightcli migrate {src} --for {target}"
        if not archive and not native:
            pipeline.structural(store, src, out, request.out, command, edit)
        else:  # a new container in the other layout; the training state is not carried
            request.out.refuse("in_place", "compress", command=f"migrate to {out.suffix}")
            by_path = {t.path.strip("/"): t for t in tensors}
            result.dropped = store.training_state()
            history = [
                *meta.history,
                pipeline.record(store, src, request.out, command, steps()),
            ]

            def weight(path: str) -> tuple[Any, tuple[int, ...], Any]:
                t = by_path[path.strip("/")]
                return store.stored_dtype(t), t.shape, store.blocks(t)

            if placed is not None:
                write_new_archive(
                    out,
                    keras3_layout.archive_config(new),
                    {"date_saved": time.strftime("%Y-%m-%d@%H:%M:%S", time.gmtime())},
                    [(placed[p], *weight(p)) for p in placed],
                    names,
                    history,
                    request.out.force,
                )
            else:
                write_legacy_model(
                    out,
                    {k: v for k, v in store.legacy_attrs().items() if k != "training_config"},
                    new,
                    [(name, [(w, weight(p)) for w, p in ws]) for name, ws in layers],
                    history,
                    request.out.force,
                )
    if request.check:
        from weightcli.framework import check_migrated

        result.check = check_migrated(src, out, line, target, request.atol)
    return result


def task(request: MigrateRequest, item: Item) -> MigrateResult:
    return run(request, item.path)
