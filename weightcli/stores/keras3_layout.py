"""Where Keras 3 keeps each weight of a model in ``model.weights.h5``, worked out from
the model's config alone (no framework imported): ``migrate`` writes a ``.keras``
archive from a legacy ``.h5`` with it.

Keras 3 does not address weights by name. ``saving_lib._save_state`` walks the model's
objects and writes each one's variables under the path of attributes that reach it
(``layers/bidirectional/forward_layer/cell/vars/0``). A container (a model's
``layers``) names its members by their class, snake-cased and numbered in list order
(``_save_container_state``: ``dense``, ``dense_1``, ...), so a layer's path depends on
where it sits in ``model.layers``:

- a Sequential: its layers as listed, without the InputLayer (``Sequential.layers``);
- a Functional: the order ``ops.function.map_graph`` gives its operations: nodes found
  depth-first from the outputs (``_build_map``), layers grouped by depth from the
  inputs, ties broken by the order the search first met them. Replayed here on the
  config's nodes.

Within a layer, ``Layer.save_own_variables`` numbers its variables (trainable, then the
rest, in creation order); ``VARIABLES`` lists that order by variable name per class, so
a legacy file's weights are placed by name, never by position. A layer with sublayers
(RNN cells, wrappers, attention projections, nested models) is placed by the
attributes Keras 3 reaches them through. A class with weights that is not in these
tables is refused: a guess could put a weight in the wrong variable.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from weightcli.errors import UnsupportedError, literal

# Each class's variables in Keras 3's order (its build()), by the name the legacy
# writer gives them; an absent variable (use_bias=False, center=False) shifts the rest.
# Keras 3 names DepthwiseConv's kernel "kernel"; tf.keras "depthwise_kernel".
_KERNEL_BIAS = ("kernel", "bias")
VARIABLES: dict[str, tuple[tuple[str, ...], ...]] = {
    **{
        cls: (("kernel",), ("bias",))
        for cls in (
            "Dense",
            "EinsumDense",
            "Conv1D",
            "Conv2D",
            "Conv3D",
            "Conv1DTranspose",
            "Conv2DTranspose",
            "Conv3DTranspose",
            "LocallyConnected1D",
        )
    },  # fmt: skip
    "DepthwiseConv1D": (("depthwise_kernel", "kernel"), ("bias",)),
    "DepthwiseConv2D": (("depthwise_kernel", "kernel"), ("bias",)),
    "SeparableConv1D": (("depthwise_kernel",), ("pointwise_kernel",), ("bias",)),
    "SeparableConv2D": (("depthwise_kernel",), ("pointwise_kernel",), ("bias",)),
    "BatchNormalization": (("gamma",), ("beta",), ("moving_mean",), ("moving_variance",)),
    "LayerNormalization": (("gamma",), ("beta",)),
    "GroupNormalization": (("gamma",), ("beta",)),
    "Embedding": (("embeddings",),),
    "PReLU": (("alpha",),),
    "Normalization": (("mean",), ("variance",), ("count",)),
    "AdditiveAttention": (("scale",),),
    "Attention": (("scale",), ("concat_score_weight",)),
    # recurrent cells (the layer's ``cell``)
    "SimpleRNNCell": (("kernel",), ("recurrent_kernel",), ("bias",)),
    "LSTMCell": (("kernel",), ("recurrent_kernel",), ("bias",)),
    "GRUCell": (("kernel",), ("recurrent_kernel",), ("bias",)),
}
# A recurrent layer keeps its weights in ``cell`` (keras/src/layers/rnn/rnn.py).
CELLS = {"SimpleRNN": "SimpleRNNCell", "LSTM": "LSTMCell", "GRU": "GRUCell"}
# MultiHeadAttention's projections: the legacy name's scope -> Keras 3's attribute
# (keras/src/layers/attention/multi_head_attention.py's ``query_dense`` ... properties).
ATTENTION = {
    "query": "query_dense",
    "key": "key_dense",
    "value": "value_dense",
    "attention_output": "output_dense",
}
MODELS = ("Functional", "Model", "Sequential")

Weights = list[tuple[str, str]]  # (the legacy weight name, its dataset path)


def snake(name: str) -> str:
    """``keras.src.utils.naming.to_snake_case``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _class_of(cls: str) -> str:
    return "Functional" if cls == "Model" else cls


def _name(layer: dict[str, Any]) -> str:
    name = layer.get("name") or (layer.get("config") or {}).get("name")
    if not isinstance(name, str):
        raise UnsupportedError("a layer of the model config has no name")
    return name


def model_layers(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Keras 3's ``model.layers`` for a (legacy-form) model config, in its order."""
    cls, cfg = model.get("class_name"), model.get("config") or {}
    layers = cfg.get("layers")
    if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
        raise UnsupportedError(f"model {literal(str(cfg.get('name')))}: no layer list")
    if cls == "Sequential":
        return [x for x in layers if x.get("class_name") != "InputLayer"]
    return _graph_order(cfg, layers)


def _refs(node: Any) -> list[tuple[str, int, int]]:
    """A node's input tensors in Keras 3's order (``tree.flatten((args, kwargs))``:
    arguments in order, then keyword arguments by sorted key)."""
    out: list[tuple[str, int, int]] = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if x.get("class_name") == "__keras_tensor__":
                h = (x.get("config") or {}).get("keras_history")
                if isinstance(h, list) and len(h) == 3:
                    out.append((str(h[0]), int(h[1]), int(h[2])))
                return
            for k in sorted(x):
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    if isinstance(node, list):  # legacy: [[layer, node, tensor, kwargs], ...]
        kwargs: Any = {}
        for ref in node:
            if not (isinstance(ref, list) and len(ref) in (3, 4) and isinstance(ref[0], str)):
                raise UnsupportedError(f"a node of the model config is not understood: {ref!r}")
            out.append((ref[0], int(ref[1]), int(ref[2])))
            kwargs = ref[3] if len(ref) == 4 else {}
        walk(kwargs)  # deserialize_node keeps the last entry's keyword arguments
    elif isinstance(node, dict):
        walk(node.get("args"))
        walk(node.get("kwargs"))
    return out


def _tensor_refs(refs: Any) -> list[tuple[str, int, int]]:
    if isinstance(refs, list) and len(refs) == 3 and isinstance(refs[0], str):
        refs = [refs]
    if isinstance(refs, dict):
        refs = list(refs.values())
    return [(str(r[0]), int(r[1]), int(r[2])) for r in refs or []]


def _graph_order(cfg: dict[str, Any], layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``map_graph``'s operation order, replayed on the config's nodes."""
    by_name = {_name(x): x for x in layers}
    inputs = _tensor_refs(cfg.get("input_layers"))
    outputs = _tensor_refs(cfg.get("output_layers"))

    def is_input(layer: str) -> bool:
        if layer not in by_name:
            raise UnsupportedError(f"the model config calls an unknown layer {literal(layer)}")
        return by_name[layer].get("class_name") == "InputLayer"

    def parents(node: tuple[str, int]) -> list[tuple[str, int, int]]:
        layer, index = node
        if is_input(layer):
            if index != 0:
                raise UnsupportedError(f"input {literal(layer)}: node {index} does not exist")
            return []
        nodes = by_name[layer].get("inbound_nodes") or []
        if not 0 <= index < len(nodes):
            raise UnsupportedError(
                f"layer {literal(layer)}: node {index} is not in the model config"
            )
        return _refs(nodes[index])

    finished: set[tuple[str, int]] = set()
    in_progress: set[tuple[str, int]] = set()
    decreasing: list[tuple[str, int]] = []
    first_seen: dict[str, int] = {}
    input_set = set(inputs)

    def visit(tensor: tuple[str, int, int]) -> None:
        """``_build_map_helper``, depth-first from ``tensor``, without recursion (a
        deep model would pass Python's recursion limit)."""
        stack: list[tuple[tuple[str, int, int], Any]] = [(tensor, None)]
        while stack:
            t, pending = stack[-1]
            node = t[:2]
            if pending is None:
                if node in finished:
                    stack.pop()
                    continue
                if not is_input(node[0]) and t in input_set:
                    finished.add(node)
                    stack.pop()
                    continue
                if node in in_progress:
                    raise UnsupportedError(f"layer {literal(node[0])} is part of a cycle")
                first_seen.setdefault(node[0], len(first_seen))
                in_progress.add(node)
                pending = iter(parents(node))
                stack[-1] = (t, pending)
            step = next(pending, None)
            if step is not None:
                stack.append((step, None))
                continue
            finished.add(node)
            in_progress.discard(node)
            decreasing.append(node)
            stack.pop()

    for t in outputs:
        if t[0] not in by_name:
            raise UnsupportedError(f"the model's output names an unknown layer {literal(t[0])}")
        visit(t)
    node_depth: dict[tuple[str, int], int] = {}
    layer_depth: dict[str, int] = {}
    for node in reversed(decreasing):
        depth = max(node_depth.setdefault(node, 0), layer_depth.get(node[0], 0))
        layer_depth[node[0]] = depth
        node_depth[node] = depth
        for t in parents(node):
            dep = t[:2]
            if dep in finished:  # part of the graph
                node_depth[dep] = max(depth + 1, node_depth.get(dep, 0))
    for t in inputs:  # inputs that reach no output are kept, first
        if t[0] in by_name and is_input(t[0]) and t[0] not in layer_depth:
            layer_depth[t[0]] = 0
            first_seen[t[0]] = -1
    order = sorted(layer_depth, key=lambda name: (-layer_depth[name], first_seen[name]))
    # ``Functional.layers`` holds layers only: a Keras operation in the graph (NotEqual,
    # module keras.src.ops...) has neither a place in the list nor weights
    return [by_name[name] for name in order if not _operation(by_name[name])]


def _operation(layer: dict[str, Any]) -> bool:
    module = layer.get("module")
    return isinstance(module, str) and module.startswith(("keras.src.ops.", "keras.ops."))


def _unique(used: dict[str, int], cls: str) -> str:
    """``_save_container_state``'s member name: the snake-cased class, numbered."""
    name = snake(_class_of(cls))
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name


def _leaf(name: str) -> str:
    """A legacy weight's variable name: ``lstm/lstm_cell/kernel:0`` -> ``kernel``."""
    return re.sub(r":\d+$", "", name.rsplit("/", 1)[-1])


def _vars(cls: str, where: str, path: str, weights: Weights) -> dict[str, str]:
    """A plain layer's weights as Keras 3 numbers them, by name (``VARIABLES``)."""
    order = VARIABLES.get(cls)
    if order is None:
        raise UnsupportedError(
            f"layer {literal(where)}: weightcli does not know where Keras 3 keeps the "
            f"weights of a {cls} layer; write .h5 instead (migrate -o OUT.h5)"
        )
    slots: dict[int, tuple[str, str]] = {}
    for weight, dataset in weights:
        leaf = _leaf(weight)
        index = next((i for i, names in enumerate(order) if leaf in names), None)
        if index is None or index in slots:
            raise UnsupportedError(
                f"layer {literal(where)} ({cls}): weight {literal(weight)} is not one "
                f"Keras 3's {cls} holds (or is there twice)"
            )
        slots[index] = (weight, dataset)
    return {slots[i][1]: f"{path}/vars/{n}" for n, i in enumerate(sorted(slots))}


def _scope(weights: Weights, depth: int, default: str) -> str:
    """The name the legacy writer gave a sublayer: the weight name's segment ``depth``
    from the end (``lstm/lstm_cell/kernel:0``, 2: ``lstm_cell``)."""
    parts = weights[0][0].split("/") if weights else []
    return parts[-depth] if len(parts) >= depth + 1 else default


def place(
    layer: dict[str, Any],
    path: str,
    weights: Weights,
    names: dict[str, str],
    renamed: dict[str, str] | None = None,
) -> dict[str, str]:
    """Each of a layer's weights (legacy name, dataset) -> its dataset path in Keras 3's
    ``model.weights.h5``, the layer's own objects being under ``path``; ``names`` gains
    the name of each object placed (its ``vars`` group's ``name``, as Keras writes it)."""
    cls = _class_of(str(layer.get("class_name")))
    cfg = layer.get("config") or {}
    where = _name(layer) if (layer.get("name") or cfg.get("name")) else cls
    names.setdefault(path, where)
    if cls in MODELS:
        return _place_model(layer, f"{path}/layers", weights, names, renamed or {})
    if not weights:
        return {}
    if cls in CELLS:
        names[f"{path}/cell"] = _scope(weights, 2, snake(CELLS[cls]))
        return _vars(CELLS[cls], where, f"{path}/cell", weights)
    out: dict[str, str] = {}
    if cls == "Bidirectional":
        halves: dict[str, Weights] = {"forward": [], "backward": []}
        for weight, dataset in weights:
            scope = weight.split("/")[1] if weight.count("/") >= 2 else ""
            side = scope.split("_", 1)[0]
            if side not in halves:
                raise UnsupportedError(
                    f"layer {literal(where)}: weight {literal(weight)} is neither the "
                    "forward nor the backward layer's"
                )
            halves[side].append((weight, dataset))
        inner = cfg.get("layer") or {}
        back = cfg.get("backward_layer") or inner
        for side, sub in (("forward", inner), ("backward", back)):
            own = halves[side]
            names[f"{path}/{side}_layer"] = own[0][0].split("/")[1] if own else side
            out.update(place(sub, f"{path}/{side}_layer", own, names))
        return out
    if cls == "TimeDistributed":
        return place(cfg.get("layer") or {}, f"{path}/layer", weights, names)
    if cls == "MultiHeadAttention":
        parts: dict[str, Weights] = defaultdict(list)
        for weight, dataset in weights:
            scope = weight.split("/")[-2] if "/" in weight else ""
            if scope not in ATTENTION:
                raise UnsupportedError(
                    f"layer {literal(where)}: weight {literal(weight)} is none of "
                    f"{', '.join(ATTENTION)}"
                )
            parts[scope].append((weight, dataset))
        for scope, attr in ATTENTION.items():
            if parts[scope]:
                names[f"{path}/{attr}"] = scope
                out.update(_vars("EinsumDense", where, f"{path}/{attr}", parts[scope]))
        return out
    return _vars(cls, where, path, weights)


def _names_within(layer: dict[str, Any]) -> set[str]:
    """The layer names a nested model's weights may be scoped by: its layers' names,
    and theirs if they are models too."""
    out: set[str] = set()
    for inner in (layer.get("config") or {}).get("layers") or []:
        if isinstance(inner, dict):
            out.add(_name(inner))
            if _class_of(str(inner.get("class_name"))) in MODELS:
                out |= _names_within(inner)
    return out


def _place_model(
    model: dict[str, Any],
    path: str,
    weights: Weights,
    names: dict[str, str],
    renamed: dict[str, str],
) -> dict[str, str]:
    """A (nested) model's weights, each scoped by the name of the layer of the model
    that holds it (a legacy file lists a nested model's weights in its own order)."""
    members = model_layers(model)
    owner: dict[str, str] = {}  # a name a weight may start with -> the member holding it
    for layer in members:
        name = _name(layer)
        owner[name] = name
        if _class_of(str(layer.get("class_name"))) in MODELS:
            for inner in _names_within(layer):
                owner[inner] = name
    for old, new in renamed.items():
        if new in owner:
            owner[old] = owner[new]
    prefixes = sorted(owner, key=len, reverse=True)  # "conv1/conv" before "conv1"
    mine: dict[str, Weights] = defaultdict(list)
    for weight, dataset in weights:
        head = next((p for p in prefixes if weight.startswith(p + "/")), "")
        if head not in owner:
            raise UnsupportedError(
                f"model {literal(_name(model))}: weight {literal(weight)} belongs to no "
                "layer on a path from its inputs to its outputs"
            )
        mine[owner[head]].append((weight, dataset))
    used: dict[str, int] = {}
    out: dict[str, str] = {}
    for layer in members:
        member = _unique(used, str(layer.get("class_name")))
        out.update(place(layer, f"{path}/{member}", mine.get(_name(layer), []), names, renamed))
    return out


def layout(
    model: dict[str, Any],
    layers: Iterable[tuple[str, Weights]],
    renamed: dict[str, str] | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """A legacy full model's weights (``hdf5.legacy_layers``: each top-level layer's
    (name, dataset)) -> their dataset paths in Keras 3's ``model.weights.h5``, and the
    name of every object on the way (its path -> the name its ``vars`` group carries);
    every weight placed, or ``UnsupportedError`` naming the one that cannot be.
    ``renamed``: the file's layer names that the config renames (old -> new)."""
    renamed = renamed or {}
    members = {_name(x): x for x in model_layers(model)}
    used: dict[str, int] = {}
    paths = {name: _unique(used, str(x.get("class_name"))) for name, x in members.items()}
    given = {renamed.get(name, name): weights for name, weights in layers}
    for name, weights in given.items():
        if weights and name not in members:
            raise UnsupportedError(
                f"layer {literal(name)} has weights but is on no path from the model's "
                "inputs to its outputs (Keras 3 would not load them)"
            )
    out: dict[str, str] = {}
    names: dict[str, str] = {}
    for name, layer in members.items():
        out.update(place(layer, f"layers/{paths[name]}", given.get(name, []), names, renamed))
    if len(set(out.values())) != len(out):
        raise UnsupportedError("two weights fall on one Keras 3 variable")
    return out, names


def archive_config(model: dict[str, Any]) -> dict[str, Any]:
    """A legacy-form model config as a ``.keras`` archive's ``config.json``: Keras 3's
    loader (``serialization_lib.deserialize_keras_object``) finds the model's class by
    its ``module``; the layers inside may keep the legacy form (``functional.
    process_layer`` and ``Sequential.from_config`` read a layer without ``module`` with
    the legacy loader)."""
    cls = _class_of(str(model.get("class_name")))
    if cls not in MODELS:
        raise UnsupportedError(f"the model config is a {cls}, not a model")
    module = "keras" if cls == "Sequential" else "keras.src.models.functional"
    return {
        "module": module,
        "class_name": cls,
        "config": model.get("config"),
        "registered_name": cls,
    }


# -- the other way: a Keras 3 model's weights as a legacy .h5 lists them -------------------

# Keys of a layer's entry that a ``.keras`` config has and Keras 3's legacy ``.h5``
# writer leaves out (compared on every catalogue model: the only differences).
ARCHIVE_ONLY = ("module", "registered_name", "build_config", "compile_config")


def legacy_config(archive: dict[str, Any]) -> dict[str, Any]:
    """A ``config.json`` as Keras 3's own legacy writer stores it in ``model_config``:
    every layer entry (and the model's) without ``module``, ``registered_name``,
    ``build_config``, ``compile_config``; no ``shared_object_id`` anywhere."""

    def strip(x: Any, entry: bool) -> Any:
        if isinstance(x, dict):
            out = {}
            for k, v in x.items():
                if k == "shared_object_id" or (entry and k in ARCHIVE_ONLY):
                    continue
                out[k] = strip(v, False)
                if k == "config" and entry and isinstance(v, dict) and "layers" in v:
                    layers = v["layers"]
                    out[k] = {**out[k], "layers": [strip(e, True) for e in layers]}
            return out
        if isinstance(x, list):
            return [strip(v, False) for v in x]
        return x

    out: dict[str, Any] = strip(archive, True)
    return out


def _var_names(cls: str, count: int) -> list[str]:
    order = VARIABLES.get(cls)
    if order is not None and len(order) == count:
        return [names[0] for names in order]
    return [f"variable_{i}" for i in range(count)]


def _indices(present: dict[str, list[int]], path: str) -> list[int]:
    return present.pop(f"{path}/vars", [])


def _unplace(
    layer: dict[str, Any], path: str, scope: str, present: dict[str, list[int]]
) -> Weights:
    """The inverse of ``place``: the variables Keras 3 keeps for ``layer`` under
    ``path`` as (a legacy weight name under ``scope``, the dataset path), in Keras 3's
    order (which is the order a legacy file lists them in)."""
    cls = _class_of(str(layer.get("class_name")))
    cfg = layer.get("config") or {}
    out: Weights = []
    if cls in MODELS:
        return _unplace_members(layer, f"{path}/layers", present)
    own = _indices(present, path)
    if own:
        names = _var_names(cls, len(own))
        out += [(f"{scope}/{names[n]}", f"{path}/vars/{i}") for n, i in enumerate(own)]
    if cls in CELLS:
        cell = _indices(present, f"{path}/cell")
        names = _var_names(CELLS[cls], len(cell))
        sub = snake(CELLS[cls])
        out += [(f"{scope}/{sub}/{names[n]}", f"{path}/cell/vars/{i}") for n, i in enumerate(cell)]
    elif cls == "Bidirectional":
        inner = cfg.get("layer") or {}
        back = cfg.get("backward_layer") or inner
        for side, half in (("forward", inner), ("backward", back)):
            inner_name = str((half.get("config") or {}).get("name", side))
            if not inner_name.startswith(f"{side}_"):
                inner_name = f"{side}_{inner_name}"
            out += _unplace(half, f"{path}/{side}_layer", f"{scope}/{inner_name}", present)
    elif cls == "TimeDistributed":
        inner = cfg.get("layer") or {}
        wrapped = (inner.get("config") or {}).get("name")
        sub = f"{scope}/{wrapped}" if isinstance(wrapped, str) else scope
        out += _unplace(inner, f"{path}/layer", sub, present)
    elif cls == "MultiHeadAttention":
        for legacy, attr in ATTENTION.items():
            idx = _indices(present, f"{path}/{attr}")
            names = _var_names("EinsumDense", len(idx))
            out += [
                (f"{scope}/{legacy}/{names[n]}", f"{path}/{attr}/vars/{i}")
                for n, i in enumerate(idx)
            ]
    elif own and cls not in VARIABLES:
        raise UnsupportedError(
            f"layer {literal(scope)}: weightcli does not know the order of a {cls} layer's weights"
        )
    return out


def _member_scope(model: dict[str, Any], member: dict[str, Any]) -> str:
    """The scope Keras 3 names a model member's variables in: a Sequential's members
    under the model's name (``sequential/dense/kernel``), a Functional's by their own."""
    if model.get("class_name") == "Sequential":
        return f"{(model.get('config') or {}).get('name', 'sequential')}/{_name(member)}"
    return _name(member)


def _unplace_members(model: dict[str, Any], path: str, present: dict[str, list[int]]) -> Weights:
    out: Weights = []
    used: dict[str, int] = {}
    for member in model_layers(model):
        name = _unique(used, str(member.get("class_name")))
        out += _unplace(member, f"{path}/{name}", _member_scope(model, member), present)
    return out


def legacy_weights(model: dict[str, Any], datasets: Iterable[str]) -> list[tuple[str, Weights]]:
    """A Keras 3 model's weights (``datasets``: the weights file's dataset paths) as a
    legacy full-model ``.h5`` lists them: each layer of ``model.layers`` in order, with
    its weights (a legacy name, the dataset) in Keras 3's order; every dataset claimed,
    or ``UnsupportedError`` naming one that is where no layer keeps weights."""
    present: dict[str, list[int]] = defaultdict(list)
    for path in datasets:
        owner, _, leaf = path.strip("/").rpartition("/")
        if not (owner.endswith("vars") and leaf.isdigit()):
            raise UnsupportedError(f"weight {literal(path)} is not where Keras 3 keeps one")
        present[owner].append(int(leaf))
    for owner in present:
        present[owner].sort()
    out: list[tuple[str, Weights]] = []
    used: dict[str, int] = {}
    for member in model_layers(model):
        name = _unique(used, str(member.get("class_name")))
        scope = _member_scope(model, member)
        out.append((_name(member), _unplace(member, f"layers/{name}", scope, present)))
    left = [f"{owner}/{i}" for owner, idx in present.items() for i in idx]
    if left:
        raise UnsupportedError(
            f"weight {literal(left[0])} belongs to no layer of the model config ({len(left)} such)"
        )
    return out


def training_state(config: dict[str, Any], tensors: Iterable[Any]) -> list[str]:
    """What a Keras 3 model stores for training (``compile_config``, the optimizer's
    and metrics' variables): what a legacy rewrite of it does not carry."""
    out = ["compile_config"] if config.get("compile_config") else []
    if any(t.optimizer and t.path.strip("/").startswith("optimizer") for t in tensors):
        out.append("optimizer")
    if any(t.optimizer and t.path.strip("/").startswith("metrics") for t in tensors):
        out.append("metrics")
    return out
