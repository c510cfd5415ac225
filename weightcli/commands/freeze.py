"""``freeze``: set ``trainable`` on layers in the stored model config (a ``.keras``
archive's or model folder's ``config.json``, a legacy ``.h5`` file's ``model_config``),
nested models included; the weights keep their bytes. Keras then loads the model with
exactly those layers frozen (or, with ``unfreeze``, trainable)."""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightcli import pipeline
from weightcli.errors import ParameterError, UnsupportedError, literal
from weightcli.params import OutputSpec
from weightcli.results import FreezeResult
from weightcli.stores import open_store
from weightcli.stores.base import Patcher
from weightcli.stores.remote import as_path

__all__ = ["FreezeRequest", "FreezeResult", "run"]


@dataclass(frozen=True)
class FreezeRequest:
    """Layer globs (matched on a layer's name or its path ``encoder/dense``), the state to
    set, and where the output goes."""

    layers: tuple[str, ...]
    unfreeze: bool = False
    out: OutputSpec = field(default_factory=OutputSpec)

    def __post_init__(self) -> None:
        self.out.refuse("allow_nonfinite", command="freeze")
        if not self.layers:
            raise ParameterError("give the layers to freeze with {select} GLOB")


def _layers(config: Any, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(path, layer config) for every layer, nested models included (the models too)."""
    out: list[tuple[str, dict[str, Any]]] = []
    layers = (config.get("config") or {}).get("layers") if isinstance(config, dict) else None
    for entry in layers or []:
        cfg = entry.get("config") if isinstance(entry, dict) else None
        if not isinstance(cfg, dict) or not isinstance(cfg.get("name"), str):
            continue
        if entry.get("class_name") == "InputLayer":
            continue
        path = prefix + cfg["name"]
        out.append((path, cfg))
        out += _layers(entry, path + "/")
    return out


def run(request: FreezeRequest, path: str | Path) -> FreezeResult:
    src = as_path(path)
    with open_store(src) as store:
        config = getattr(store, "model_config", None)
        if not isinstance(config, dict) or not store.meta.full_model:
            raise UnsupportedError(
                f"{src}: a {store.meta.format_label} stores no model config: trainable flags live "
                "in a model's config (.keras, a model folder, a full-model .h5)"
            )
        new = copy.deepcopy(config)
        want = request.unfreeze  # the trainable flag to set: False freezes
        changed: list[tuple[str, bool]] = []
        matched: set[str] = set()
        for layer_path, cfg in _layers(new):
            name = layer_path.rsplit("/", 1)[-1]
            hits = [
                g
                for g in request.layers
                if fnmatch.fnmatchcase(name, g) or fnmatch.fnmatchcase(layer_path, g)
            ]
            if hits:
                matched.update(hits)
                before = cfg.get("trainable", True) is not False
                cfg["trainable"] = want
                changed.append((layer_path, before))
        missing = [g for g in request.layers if g not in matched]
        if missing:
            names = ", ".join(p for p, _ in _layers(config)[:8])
            raise ParameterError(
                f"{{select}} {literal(', '.join(missing))} matches no layer (layers: {literal(names)})"
            )
        out = request.out.plan(store, src)
        result = FreezeResult(
            str(src), None if request.out.dry_run else str(out), [(p, b, want) for p, b in changed]
        )
        if request.out.dry_run:
            return result
        assert out is not None

        def edit(patcher: Patcher) -> list[dict[str, Any]]:
            patcher.set_config(new)
            return [{"command": "freeze", "layers": list(request.layers), "trainable": want}]

        command = f"weightcli freeze {src}" + (" --unfreeze" if request.unfreeze else "")
        pipeline.structural(store, src, out, request.out, command, edit)
        return result
