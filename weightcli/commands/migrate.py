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
from weightcli.stores.hdf5 import H5Store, legacy_layers, training_state
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
    src = as_path(path)
    with open_store(src) as store:
        config = getattr(store, "model_config", None)
        legacy = store.meta.legacy_full_model
        if legacy and store.meta.full_model and not isinstance(config, dict):
            raise CorruptError(f"{src}: its model_config is not a model config (damaged?)")
        if not legacy or not store.meta.full_model or not isinstance(config, dict):
            raise UnsupportedError(
                f"{src}: a {store.meta.format_label}: migrate reads a legacy full-model .h5 "
                "(model.save('m.h5')) today; .keras archives and SavedModels are not yet done"
            )
        from weightcli.framework import python_code_in

        code = python_code_in(config)
        if code:
            raise UnsupportedError(
                f"{src}: layer(s) {name_list(code)} are Lambda layers (Python bytecode in the "
                "file): weightcli never runs or copies it; rebuild those layers in code"
            )
        line = rules.migrated_for(store.meta.history) or rules.writer_line(store.meta.writer)
        if line == "keras1":
            raise UnsupportedError(f"{src}: written by Keras 1: neither Keras line loads it")
        target = request.target or ("keras3" if line != "keras3" else "tf-keras")
        if line == target:
            raise ParameterError(
                f"{literal(str(src))} was written by {store.meta.writer}: it is already in "
                f"{target}'s form (give {{target}} the other line)"
            )
        custom: frozenset[str] = frozenset()
        if request.custom_objects is not None:
            from weightcli.framework import import_custom_objects, registered_names

            custom = registered_names(import_custom_objects(request.custom_objects))
        new, changes = rules.translate(config, target, custom)
        raw = request.output_for(src) or request.out.output
        archive = str(raw or "").lower().endswith(".keras")
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
        legacy_h5 = store if isinstance(store, H5Store) else None
        if archive and legacy_h5 is None:
            raise UnsupportedError(f"{src}: a .keras archive is written from a legacy .h5")
        placed, names = (
            keras3_layout.layout(new, legacy_layers(legacy_h5), renamed)
            if archive and legacy_h5 is not None
            else (None, {})
        )
        out = request.out.plan(
            store,
            src,
            request.output_for(src),
            mkdirs=bool(request.outputs),
            as_format=(Format.KERAS_ARCHIVE, "Keras archive (.keras)") if archive else None,
        )
        tensors = [t for t in store.tensors()]
        optimizer = [t.name for t in tensors if t.optimizer]
        result = MigrateResult(
            str(src),
            None if request.out.dry_run else str(out),
            line,
            target,
            [c.to_json() for c in changes],
            len([t for t in tensors if not t.optimizer]),
            optimizer,
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
        if placed is None or legacy_h5 is None:
            pipeline.structural(store, src, out, request.out, command, edit)
        else:  # a new container: Keras 3's layout, the training state not carried
            request.out.refuse("in_place", command="migrate to .keras")
            result.dropped = training_state(legacy_h5)
            history = [
                *store.meta.history,
                pipeline.record(store, src, request.out, command, steps()),
            ]
            write_new_archive(
                out,
                keras3_layout.archive_config(new),
                {"date_saved": time.strftime("%Y-%m-%d@%H:%M:%S", time.gmtime())},
                [
                    (placed[t.path], legacy_h5.dataset(t).dtype, t.shape, store.blocks(t))
                    for t in tensors
                    if t.path in placed
                ],
                names,
                history,
                request.out.force,
            )
    if request.check:
        from weightcli.framework import check_migrated

        result.check = check_migrated(src, out, line, target, request.atol)
    return result


def task(request: MigrateRequest, item: Item) -> MigrateResult:
    return run(request, item.path)
