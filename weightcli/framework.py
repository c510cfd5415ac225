"""Everything that needs the framework: load a checkpoint with Keras / TensorFlow and
run it (``verify``'s load and forward-pass checks, ``scale --by-activation``'s model).

The only module that imports TensorFlow or Keras, and only inside its functions, so
no other command pays for the import. TensorFlow is an optional extra
(``weightcli[tf]``): without it, these functions raise one clear error naming it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weightcli.errors import (
    InputError,
    MissingExtraError,
    ParameterError,
    UnsupportedError,
    UsageError,
    literal,
)
from weightcli.results import Check, CheckStatus
from weightcli.results import name_list as _names
from weightcli.select import Selection
from weightcli.stores import Store, open_store

PASS, WARN, FAIL, SKIP = CheckStatus.PASS, CheckStatus.WARN, CheckStatus.FAIL, CheckStatus.SKIP


@dataclass
class Runnable:
    """A loaded model: named inputs (name -> (shape with None, dtype)) and a call."""

    how: str
    inputs: dict[str, tuple[tuple[int | None, ...], str]]
    call: Callable[[dict[str, np.ndarray]], list[np.ndarray]]
    # Inputs read as indices (an Embedding's input): name -> how many rows it has.
    index_limits: dict[str, int] = field(default_factory=dict)


def _quiet_tf() -> None:
    """Import TensorFlow and Keras once, without their start-up chatter on stderr.

    absl prints some lines before TF_CPP_MIN_LOG_LEVEL applies, so file descriptor 2
    is pointed at /dev/null for the import only; Python exceptions still propagate.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    if sys.modules.get("tensorflow") is not None and sys.modules.get("keras") is not None:
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError.of(
            "loading a model (verify without --no-load, scale --by-activation)",
            "tf",
            exc.name or "tensorflow",
        ) from exc
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep the framework's Python warnings and log lines off stderr (unless --debug):
    the checks report what matters, one line each."""
    if os.environ.get("WEIGHTCLI_DEBUG"):
        yield
        return
    loggers = [logging.getLogger(n) for n in ("absl", "tensorflow", "keras", "h5py")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


@contextlib.contextmanager
def silent() -> Iterator[None]:
    """Native code's prints (file descriptors 1 and 2) and Python's stdout kept off
    stdout, which is the JSON's: TensorFlow's converter prints its progress on both.
    They go to /dev/null, or with --debug to stderr. Python exceptions still propagate."""
    sys.stdout.flush()
    sys.stderr.flush()
    debug = bool(os.environ.get("WEIGHTCLI_DEBUG"))
    saved = [os.dup(1), os.dup(2)]
    try:
        with (
            open(os.devnull, "w") as null,
            contextlib.redirect_stdout(sys.stderr if debug else null),
        ):
            os.dup2(saved[1] if debug else null.fileno(), 1)
            if not debug:
                os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def import_custom_objects(path: Path) -> dict[str, Any]:
    """Import a Python file of custom Keras objects: the classes it registers with
    ``keras.saving.register_keras_serializable`` are found by ``load_model``; every class
    it defines is also returned (to pass as ``custom_objects``)."""
    import importlib.util

    keras_module()
    if not path.is_file():
        raise InputError(f"{path}: custom objects file not found")
    spec = importlib.util.spec_from_file_location(f"weightcli_custom_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise InputError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        with quiet():
            spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # sys.exit() in it must not end weightcli quietly
        msg = (str(exc).strip().splitlines() or [""])[0]
        raise UsageError(
            f"{path}: the custom objects file raised {type(exc).__name__}: {msg}"
        ) from exc
    found = {k: v for k, v in vars(module).items() if isinstance(v, type)}
    _CUSTOM.update(found)
    return found


def registered_names(found: dict[str, Any]) -> frozenset[str]:
    """The names a config may give the classes of a custom objects file: each class's
    own and, where Keras registered it, its registered name (``package>Name``)."""
    keras = keras_module()
    names = set(found)
    for cls in found.values():
        try:
            names.add(keras.saving.get_registered_name(cls))
        except Exception:  # noqa: BLE001, S112 - not a Keras object: its own name only
            continue
    return frozenset(names)


# Classes from --custom-objects files, passed to every load_model of this process.
_CUSTOM: dict[str, Any] = {}


def keras_module() -> Any:
    """Keras, imported quietly (raises MissingExtraError without the ``tf`` extra)."""
    _quiet_tf()
    import keras

    return keras


def load_keras_model(path: Path, store: Store, architecture: Path | None) -> Any:
    """A Keras model: a full-model file, or a weights-only file loaded into ``architecture``."""
    if not store.meta.keras_layers:
        raise UnsupportedError(
            f"{path}: a {store.meta.format_label} exposes no Keras layers, so intermediate activations cannot be "
            "measured; use the model's .keras or .h5 file"
        )
    code = python_code_in(getattr(store, "model_config", None))
    if code:
        raise UnsupportedError(
            f"{path}: layer(s) {_names(code)} hold Python bytecode (Lambda), which loading "
            "would run: weightcli does not run a model file's code here"
        )
    keras = keras_module()
    try:
        with quiet():
            return _keras_load(keras, path, store, architecture)
    except (UsageError, UnsupportedError):
        raise
    except Exception as exc:
        raise InputError(
            f"{path}: Keras could not load the model: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        ) from exc


def _keras_load(keras: Any, path: Path, store: Store, architecture: Path | None) -> Any:
    if store.meta.full_model:
        return keras.models.load_model(path, compile=False, custom_objects=_CUSTOM or None)
    if architecture is None:
        raise ParameterError(
            f"{literal(path)}: a weights-only file: give {{architecture}} MODEL (a full model file)"
        )
    model = keras.models.load_model(architecture, compile=False, custom_objects=_CUSTOM or None)
    model.load_weights(path)
    return model


def _keras_runnable(model: Any, how: str) -> Runnable:
    inputs = {}
    for i, t in enumerate(model.inputs):
        name = getattr(t, "name", None) or f"input_{i}"
        name = name.split(":")[0]
        inputs[name] = (tuple(t.shape), str(getattr(t.dtype, "name", t.dtype)))
    names = list(inputs)
    limits: dict[str, int] = {}
    for layer in getattr(model, "layers", []):
        if type(layer).__name__ != "Embedding":
            continue
        try:
            fed = layer.input
        except Exception:  # called more than once: no single input
            continue
        for name, t in zip(names, model.inputs, strict=True):
            if fed is t:
                limits[name] = int(layer.input_dim)

    def call(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = [feed[n] for n in names]
        out = model(args[0] if len(args) == 1 else args, training=False)
        outs = (
            out
            if isinstance(out, list | tuple)
            else list(out.values())
            if isinstance(out, dict)
            else [out]
        )
        return [np.asarray(o) for o in outs]

    return Runnable(how, inputs, call, limits)


def python_code_in(config: Any) -> list[str]:
    """The layers of a Keras model config that hold Python code (a ``Lambda``'s
    marshalled bytecode: Keras 2's ``function_type: "lambda"``, Keras 3's
    ``__lambda__`` objects). Loading such a model runs that code; this only reads the
    JSON. Layer names, in config order."""
    found: list[str] = []

    def walk(node: Any, layer: str | None, depth: int) -> None:
        if depth > 200:  # the config parser already refuses deeper nesting
            return
        if isinstance(node, dict):
            cfg = node.get("config")
            if isinstance(cfg, dict) and isinstance(node.get("class_name"), str):
                name = cfg.get("name")
                layer = name if isinstance(name, str) else layer
            code = (
                node.get("function_type") == "lambda"
                or node.get("output_shape_type") == "lambda"
                or node.get("class_name") == "__lambda__"
            )
            if code:
                label = layer or "?"
                if label not in found:
                    found.append(label)
            for value in node.values():
                walk(value, layer, depth + 1)
        elif isinstance(node, list):
            for value in node:
                walk(value, layer, depth + 1)

    walk(config, None, 0)
    return found


@contextlib.contextmanager
def _tf_keras_safe_mode(safe: bool) -> Iterator[None]:
    """tf_keras applies safe mode to ``.keras`` archives only: its legacy ``.h5`` loader
    unmarshals a Lambda's bytecode unless the scope says otherwise."""
    from tf_keras.src.saving import serialization_lib

    with serialization_lib.SafeModeScope(safe):
        yield


def _load_keras_full(path: Path, writer: str | None, trust_code: bool = False) -> Runnable:
    _quiet_tf()
    import keras

    try:
        return _keras_runnable(
            keras.models.load_model(
                path, compile=False, custom_objects=_CUSTOM or None, safe_mode=not trust_code
            ),
            "keras.models.load_model",
        )
    except Exception as first:
        if writer and writer.startswith("Keras 2"):
            try:
                import tf_keras

                with _tf_keras_safe_mode(not trust_code):
                    model = tf_keras.models.load_model(
                        path, compile=False, custom_objects=_CUSTOM or None
                    )
                return _keras_runnable(model, "tf_keras.models.load_model")
            except ImportError:
                pass
        raise first


def _load_savedmodel(path: Path) -> Runnable:
    _quiet_tf()
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    sigs = dict(loaded.signatures)
    if "serving_default" not in sigs:
        raise LookupError(f"no serving_default signature (signatures: {', '.join(sigs) or 'none'})")
    fn = sigs["serving_default"]
    spec = fn.structured_input_signature[1]
    inputs = {
        k: (tuple(v.shape.as_list()) if v.shape.rank is not None else (None,), v.dtype.name)
        for k, v in spec.items()
    }

    def call(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = fn(**{k: tf.constant(v) for k, v in feed.items()})
        return [np.asarray(out[k]) for k in sorted(out)]

    call.keepalive = loaded  # type: ignore[attr-defined]
    return Runnable("tf.saved_model.load + serving_default", inputs, call)


def _interpreter_class() -> tuple[Any, str]:
    """LiteRT's interpreter (``ai-edge-litert``), else TensorFlow's own."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "LiteRT Interpreter (ai_edge_litert)"
    except ImportError:
        pass
    _quiet_tf()
    import tensorflow as tf

    return tf.lite.Interpreter, "tf.lite.Interpreter"


def load_tflite(path: Path) -> Runnable:
    """A ``.tflite`` model run by the interpreter (which verifies the flatbuffer as it
    loads it). A batch runs one sample at a time when the model's batch is fixed at 1,
    as the converter makes it; int8 inputs and outputs are (de)quantized with their own
    parameters, so the caller feeds and reads floats."""
    interpreter_class, how = _interpreter_class()
    with quiet(), silent():
        it = interpreter_class(model_path=str(path))
        it.allocate_tensors()
    ins, outs = it.get_input_details(), it.get_output_details()
    inputs = {d["name"]: ((None, *(int(x) for x in d["shape"][1:])), "float32") for d in ins}

    def quantize(x: np.ndarray, d: dict[str, Any]) -> np.ndarray:
        scale, zero = d["quantization"]
        if np.dtype(d["dtype"]).kind in "iu" and scale:
            info = np.iinfo(d["dtype"])
            return np.clip(np.round(x / scale + zero), info.min, info.max).astype(d["dtype"])
        return np.asarray(x, d["dtype"])

    def dequantize(y: np.ndarray, d: dict[str, Any]) -> np.ndarray:
        scale, zero = d["quantization"]
        if np.dtype(d["dtype"]).kind in "iu" and scale:
            return (y.astype(np.float32) - zero) * scale
        return np.asarray(y)

    def call(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        n = len(next(iter(feed.values())))
        results: list[list[np.ndarray]] = [[] for _ in outs]
        for k in range(n):
            for d in ins:
                it.set_tensor(d["index"], quantize(feed[d["name"]][k : k + 1], d))
            it.invoke()
            for j, d in enumerate(outs):
                results[j].append(dequantize(it.get_tensor(d["index"]), d))
        return [np.concatenate(r) for r in results]

    return Runnable(how, inputs, call)


def convert_tflite(
    path: Path, store: Store, int8: bool, calibration: dict[str, np.ndarray] | None
) -> bytes:
    """TensorFlow's converter on a full Keras model or a SavedModel, the tutorials'
    route: float32, or (``int8``) full-integer weights and activations calibrated on
    ``calibration``'s samples (inputs and outputs stay float32)."""
    refused = code_refusal(store) if not store.meta.has_graph else None
    if refused is not None:
        raise UnsupportedError(f"{literal(path)}: {refused.detail}")
    _quiet_tf()
    import tensorflow as tf

    with quiet(), silent():
        if store.meta.full_model:
            converter = tf.lite.TFLiteConverter.from_keras_model(_full_model(path, store))
        elif store.meta.has_graph:
            converter = tf.lite.TFLiteConverter.from_saved_model(str(path))
        else:
            raise UsageError(
                f"{literal(path)}: a {store.meta.format_label} holds no model to convert: "
                "export --to tflite needs a full model (.keras, an .h5 with its config, "
                "a SavedModel)"
            )
        if int8:
            assert calibration is not None
            samples = calibration

            def representative() -> Iterator[list[np.ndarray]]:
                n = len(next(iter(samples.values())))
                for k in range(n):
                    yield [np.asarray(v[k : k + 1], np.float32) for v in samples.values()]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
        try:
            return bytes(converter.convert())
        except Exception as exc:
            raise UnsupportedError(
                f"{literal(path)}: TensorFlow's converter refused the model: {_first(exc)}"
            ) from exc


def _full_model(path: Path, store: Store) -> Any:
    """The Keras model of a full-model file (Keras 3, or tf_keras for a Keras 2 file
    Keras 3 refuses), in safe mode."""
    import keras

    try:
        return keras.models.load_model(path, compile=False, custom_objects=_CUSTOM or None)
    except Exception as first:
        if not (store.meta.writer or "").startswith("Keras 2"):
            raise UnsupportedError(
                f"{literal(path)}: Keras could not load it: {_first(first)}"
            ) from first
        try:
            import tf_keras
        except ImportError:
            raise UnsupportedError(
                f"{literal(path)}: Keras could not load it: {_first(first)}"
            ) from first
        with _tf_keras_safe_mode(True):
            return tf_keras.models.load_model(path, compile=False, custom_objects=_CUSTOM or None)


def weights_match(arch: Store, weights: Store) -> list[str]:
    """Per-layer mismatches between an architecture's weights and a weights-only file."""
    sel = Selection(floats_only=False)
    want = {t.name: t for t in arch.tensors() if sel.matches(t)}
    have = {t.name: t for t in weights.tensors() if sel.matches(t)}
    problems = []
    for name, t in want.items():
        h = have.get(name)
        if h is None:
            problems.append(f"{name}: missing in the weights file")
        elif h.shape != t.shape:
            problems.append(
                f"{name}: shape {h.shape} in the weights, {t.shape} in the architecture"
            )
    problems += [f"{name}: not in the architecture" for name in have if name not in want]
    return problems


TRUST_HINT = "pass --trust-code (trust_code=True in Python) only if you trust the file"


def code_refusal(store: Store) -> Check | None:
    """The "loads" check of a model whose loading would run code it carries, unless
    the user trusts it: a Keras model with Lambda bytecode, a SavedModel's graph."""
    code = python_code_in(getattr(store, "model_config", None))
    if code:
        return Check(
            "loads",
            FAIL,
            f"not loaded: layer(s) {_names(code)} hold Python bytecode (Lambda), which "
            f"loading would run; {TRUST_HINT}",
            {"code_layers": code},
        )
    if store.meta.has_graph:
        return Check(
            "loads",
            SKIP,
            "not loaded: loading a SavedModel runs the TensorFlow graph it holds (its ops "
            f"can read and write files); {TRUST_HINT}",
        )
    return None


def load(
    path: Path, store: Store, architecture: Path | None, trust_code: bool = False
) -> tuple[Runnable | None, Check]:
    """Load ``path`` with its framework; the check says how, or why it did not load.

    Without ``trust_code`` nothing that runs the file's own code is loaded: a Keras
    model whose config holds Lambda bytecode fails the check unloaded, a SavedModel is
    skipped, and Keras (and tf_keras) load in safe mode."""
    with quiet():
        return _load(path, store, architecture, trust_code)


def _load(
    path: Path, store: Store, architecture: Path | None, trust_code: bool
) -> tuple[Runnable | None, Check]:
    meta = store.meta
    if not trust_code:
        refused = code_refusal(store)
        if refused is not None:
            return None, refused
    try:
        if meta.format == "tflite":
            r = load_tflite(path)
            return r, Check("loads", PASS, f"loaded with {r.how}")
        if meta.full_model:
            r = _load_keras_full(path, store.meta.writer, trust_code)
            return r, Check("loads", PASS, f"loaded with {r.how}")
        if meta.weights_only:
            if architecture is None:
                return None, Check(
                    "loads",
                    SKIP,
                    "a weights-only file: give --architecture MODEL (a full model file) to load it",
                )
            with open_store(architecture) as arch:
                problems = weights_match(arch, store)
                arch_writer = arch.meta.writer
                if not arch.meta.full_model:
                    raise ParameterError(
                        f"{literal(architecture)}: {{architecture}} needs a full model file (.h5 or .keras)"
                    )
                refused = None if trust_code else code_refusal(arch)
            if refused is not None:
                refused.detail = f"the architecture {architecture.name}: {refused.detail}"
                return None, refused
            # Keras itself decides: Keras 3 loads a .weights.h5 by position, so names that
            # differ are a warning when it loads, and the reason when it does not.
            try:
                loaded = _load_weights_into(architecture, arch_writer, path, trust_code)
            except Exception as exc:
                if not problems:
                    raise
                layers = sorted({p.split("/")[0] for p in problems})
                msg = str(exc).strip().splitlines()
                return None, Check(
                    "loads",
                    FAIL,
                    f"Keras could not load the weights ({type(exc).__name__}: "
                    f"{msg[0][:120] if msg else ''}); they do not fit the architecture in layers "
                    f"{_names(layers)}: {_names(problems, 3)}",
                    {"problems": problems},
                )
            done = f"weights loaded into the architecture of {architecture.name} with {loaded.how}"
            if problems:
                return loaded, Check(
                    "loads",
                    WARN,
                    f"{done}, by position: names differ from the architecture's: "
                    f"{_names(problems, 3)}",
                    {"problems": problems},
                )
            return loaded, Check("loads", PASS, done)
        if meta.has_graph:
            r = _load_savedmodel(path)
            return r, Check("loads", PASS, f"loaded with {r.how}")
        if "note" in store.meta.extra:
            return None, Check(
                "loads", SKIP, f"cannot load this folder: {store.meta.extra['note']}"
            )
        return None, Check(
            "loads",
            SKIP,
            f"a {store.meta.format_label} is not loaded (weightcli runs Keras models and "
            "SavedModels): static checks only",
        )
    except (UsageError, InputError, MissingExtraError):
        raise
    except Exception as exc:  # the framework's own verdict on the file
        msg = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]
        if (store.meta.writer or "").startswith("Keras 1."):
            detail = f"written by {store.meta.writer}, which neither Keras 3 nor tf-keras loads ({detail})"
        return None, Check("loads", FAIL, detail)


def _load_weights_into(
    architecture: Path, writer: str | None, weights: Path, trust_code: bool = False
) -> Runnable:
    _quiet_tf()
    import keras

    try:
        model = keras.models.load_model(
            architecture, compile=False, custom_objects=_CUSTOM or None, safe_mode=not trust_code
        )
        model.load_weights(weights)
        return _keras_runnable(model, "keras load_weights")
    except Exception:
        if not (writer and writer.startswith("Keras 2")):
            raise
        import tf_keras

        with _tf_keras_safe_mode(not trust_code):
            model = tf_keras.models.load_model(
                architecture, compile=False, custom_objects=_CUSTOM or None
            )
        model.load_weights(weights)
        return _keras_runnable(model, "tf_keras load_weights")


def make_inputs(
    r: Runnable, seed: int, batch: int, input_file: Path | None
) -> dict[str, np.ndarray]:
    """A deterministic input from the model's input signature, or the arrays of ``input_file``."""
    if input_file is not None:
        return _read_inputs(r, input_file)
    rng = np.random.default_rng(seed)
    feed = {}
    for name, (shape, dtype) in r.inputs.items():
        dims = [batch if i == 0 else (d if d is not None else 8) for i, d in enumerate(shape)] or [
            batch
        ]
        if name in r.index_limits:  # an Embedding's rows: valid indices, whatever the dtype
            top = r.index_limits[name]
            feed[name] = rng.integers(0, top, size=dims).astype(dtype if dtype else "int32")
        elif "int" in dtype:
            feed[name] = rng.integers(0, 8, size=dims).astype(dtype)
        else:
            feed[name] = rng.normal(size=dims).astype(dtype if "float" in dtype else "float32")
    return feed


def _read_inputs(r: Runnable, path: Path) -> dict[str, np.ndarray]:
    from weightcli.arrays import load_any

    data = load_any(path)
    names = list(r.inputs)
    if isinstance(data, np.ndarray) and data.size == 0:
        raise UsageError(f"{path}: the input array is empty")
    if not isinstance(data, np.ndarray) and any(data[k].size == 0 for k in data.files):
        raise UsageError(f"{path}: an input array is empty")
    if isinstance(data, np.ndarray):
        if len(names) != 1:
            raise UsageError(
                f"{path}: the model has {len(names)} inputs ({', '.join(names)}): give a .npz with one array each"
            )
        return {names[0]: data}
    arrays = {k: data[k] for k in data.files}
    if len(arrays) == 1 and len(names) == 1:
        return {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise UsageError(
            f"{path}: no array for model input(s) {', '.join(missing)} (it has {', '.join(arrays)})"
        )
    return {n: arrays[n] for n in names}


def adapt(feed: dict[str, np.ndarray], r: Runnable) -> dict[str, np.ndarray]:
    """The same inputs for another model: by name, or by position when the names differ."""
    if set(feed) == set(r.inputs) or len(feed) != len(r.inputs):
        return feed
    return dict(zip(r.inputs, feed.values(), strict=True))


def run(r: Runnable, feed: dict[str, np.ndarray]) -> tuple[list[np.ndarray] | None, Check]:
    feed = adapt(feed, r)
    try:
        with quiet():
            outs = r.call(feed)
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        return None, Check(
            "forward pass", FAIL, f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]
        )
    bad = [i for i, o in enumerate(outs) if not np.isfinite(o).all()]
    shapes = ", ".join(str(tuple(o.shape)) for o in outs)
    if bad:
        return outs, Check(
            "forward pass", FAIL, f"output {bad[0]} holds NaN/Inf (outputs {shapes})"
        )
    return outs, Check("forward pass", PASS, f"finite outputs {shapes}")


def compare_outputs(
    outs: list[np.ndarray],
    refs: list[np.ndarray],
    atol: float,
    rtol: float,
    min_cosine: float | None,
) -> Check:
    """Outputs against the reference's on the same input: allclose(atol, rtol) and cosine."""
    if len(outs) != len(refs) or any(o.shape != r.shape for o, r in zip(outs, refs, strict=False)):
        return Check("outputs match reference", FAIL, "the outputs differ in number or shape")
    worst: dict[str, Any] = {}
    ok = True
    for o, r in zip(outs, refs, strict=True):
        x, y = o.astype(np.float64), r.astype(np.float64)
        d = np.abs(x - y)
        max_abs = float(d.max()) if d.size else 0.0
        ny = float(np.linalg.norm(y))
        rel = float(np.linalg.norm(x - y)) / ny if ny else (0.0 if max_abs == 0 else float("inf"))
        nx = float(np.linalg.norm(x))
        cos = (
            float((x.ravel() @ y.ravel()) / (nx * ny)) if nx and ny else (1.0 if nx == ny else 0.0)
        )
        close = bool(np.allclose(x, y, rtol=rtol, atol=atol))
        top1 = None
        if x.ndim == 2 and x.shape[1] >= 2:
            top1 = float((x.argmax(1) == y.argmax(1)).mean())
        ok &= close and (min_cosine is None or cos >= min_cosine)
        if not worst or max_abs > worst["max_abs"]:
            worst = {
                "max_abs": max_abs,
                "rel_error": rel,
                "cosine": cos,
                "top1_agreement": top1,
                "allclose": close,
            }
    detail = f"max |diff| {worst['max_abs']:.3g}, relative error {worst['rel_error']:.3g}, cosine {worst['cosine']:.6f}"
    if worst["top1_agreement"] is not None:
        detail += f", top-1 agreement {100 * worst['top1_agreement']:.1f}%"
    detail += f" (atol {atol:g}, rtol {rtol:g}" + (
        f", min cosine {min_cosine:g})" if min_cosine is not None else ")"
    )
    return Check("outputs match reference", PASS if ok else FAIL, detail, worst)


@dataclass(frozen=True)
class LayerSlot:
    """A layer with weights, at its index in Keras's ``_flatten_layers(include_self=
    False)`` order (the index KerasHub's LoRA adapters use), with where its LoRA target
    variable (``kernel``, ``embeddings``) is stored in a Keras 3 weights file."""

    index: int
    name: str
    class_name: str
    lora: bool  # the layer has ``enable_lora``
    target: str | None  # the stored path of its LoRA target variable ("/layers/.../vars/0")
    variable: str | None = None  # that variable's Keras path ("dense_1/kernel")


def _without(text: str, prefix: str) -> str:
    return text[len(prefix) :] if text.startswith(prefix) else text


def keras_layer_slots(config: Any, label: str) -> list[LayerSlot]:
    """The layers of a Keras 3 model config, as KerasHub indexes them for LoRA.

    The model is built from its config (Keras imports only its own packages: keras,
    keras_hub, ...; a Lambda's code is refused before) inside a ``StatelessScope`` that
    does not initialise variables: no weight is allocated, whatever the model's size.
    Each variable's stored path comes from Keras's own saving walk
    (``saving_lib._save_state``) run against a store that records names, not values."""
    if not isinstance(config, dict):
        raise InputError(f"{label}: no Keras model config to build the layer list from")
    code = python_code_in(config)
    if code:
        raise UnsupportedError(
            f"{label}: layer(s) {_names(code)} hold Python bytecode (Lambda), which building "
            "the model would run: refused"
        )
    keras = keras_module()
    try:
        from keras.src.saving import saving_lib
    except ImportError as exc:  # pragma: no cover - Keras 2 has no saving_lib
        raise MissingExtraError.of("LoRA adapters", "tf", "keras>=3") from exc
    # The compile config would build an optimizer (variables with values): the layers
    # are all that is needed.
    config = {k: v for k, v in config.items() if k != "compile_config"}
    try:
        with quiet(), keras.StatelessScope(initialize_variables=False):
            if "module" in config:  # Keras 3's serialisation
                model = keras.saving.deserialize_keras_object(
                    config, custom_objects=_CUSTOM or None, safe_mode=True
                )
            else:  # a legacy .h5's config: Keras 3's legacy loader reads it
                from keras.src.legacy.saving import saving_utils

                model = saving_utils.model_from_config(config, custom_objects=_CUSTOM or None)
    except Exception as exc:
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise InputError(
            f"{label}: Keras could not build the model from its config: "
            f"{type(exc).__name__}: {first}"
        ) from exc
    paths: dict[int, str] = {}

    class _Names(saving_lib.H5IOStore):
        """Keras's saving walk, recording each variable's path instead of its value."""

        def __init__(self) -> None:
            pass

        def __bool__(self) -> bool:
            return True

        def make(self, path: str, metadata: Any = None) -> Any:
            where = "/" + path.strip("/") + "/vars/" if path.strip("/") else "/vars/"

            class _Vars(dict):
                def __setitem__(self, key: str, value: Any) -> None:
                    paths[id(value)] = where + str(key)

            return _Vars()

    saving_lib._save_state(
        model, weights_store=_Names(), assets_store=None, inner_path="", visited_saveables=set()
    )
    slots = []
    layers = [ly for ly in model._flatten_layers(include_self=False) if ly.weights]
    for i, layer in enumerate(layers):
        var = None
        for attr in ("_kernel", "kernel", "_embeddings", "embeddings"):
            v = getattr(layer, attr, None)
            if v is not None and hasattr(v, "shape") and id(v) in paths:
                var = v
                break
        slots.append(
            LayerSlot(
                i,
                layer.name,
                type(layer).__name__,
                hasattr(layer, "enable_lora"),
                paths.get(id(var)) if var is not None else None,
                _without(str(var.path), f"{model.name}/") if var is not None else None,
            )
        )
    return slots


def _load_line(path: Path, line: str | None) -> Runnable:
    """A legacy .h5 loaded by one Keras line: tf_keras for "tf-keras", Keras 3 else."""
    _quiet_tf()
    with quiet():
        if line == "tf-keras":
            try:
                import tf_keras
            except ImportError as exc:
                raise MissingExtraError.of("migrate --check", "tf", "tf-keras") from exc
            with _tf_keras_safe_mode(True):
                model = tf_keras.models.load_model(
                    path, compile=False, custom_objects=_CUSTOM or None
                )
            return _keras_runnable(model, "tf_keras.models.load_model")
        import keras

        model = keras.models.load_model(
            path, compile=False, safe_mode=True, custom_objects=_CUSTOM or None
        )
        return _keras_runnable(model, "keras.models.load_model")


def check_migrated(src: Path, out: Path, src_line: str | None, target: str, atol: float) -> Check:
    """IN loaded by the Keras that wrote it and OUT by the target's, run on the same
    seeded random inputs: PASS when every output is within ``atol``."""
    name = f"loads in {target} and predicts as the original"
    try:
        before = _load_line(src, src_line)
    except (UsageError, UnsupportedError, MissingExtraError):
        raise
    except Exception as exc:
        return Check(name, SKIP, f"the original does not load in its own Keras: {_first(exc)}")
    try:
        after = _load_line(out, target)
    except Exception as exc:
        return Check(name, FAIL, f"{target} cannot load the output: {_first(exc)}")
    feed = make_inputs(before, 0, 4, None)
    refs, ran_before = run(before, feed)
    if refs is None:  # the original itself does not run on these inputs
        return Check(name, SKIP, f"the original does not run on seeded inputs: {ran_before.detail}")
    outs, ran = run(after, adapt(feed, after))
    if outs is None:
        return Check(name, FAIL, f"a forward pass failed: {ran.detail}")
    check = compare_outputs(outs, refs, atol, 0.0, None)
    return Check(name, check.status, check.detail, check.data)


def check_converted(
    src: Path, out: Path, samples: dict[str, np.ndarray] | None, atol: float
) -> Check:
    """The converted ``out`` run by the interpreter against the model ``src`` on the
    same inputs (``samples``, or seeded random ones): PASS within ``atol``."""
    name = "the interpreter computes what the model computes"
    with open_store(src) as store:
        try:
            with quiet():
                if store.meta.full_model:
                    before = _keras_runnable(_full_model(src, store), "keras")
                else:
                    before = _load_savedmodel(src)
        except (UsageError, UnsupportedError, MissingExtraError):
            raise
        except Exception as exc:
            return Check(name, SKIP, f"the model does not load to compare with: {_first(exc)}")
    try:
        after = load_tflite(out)
    except Exception as exc:
        return Check(name, FAIL, f"the interpreter cannot load the output: {_first(exc)}")
    feed = adapt(samples, before) if samples is not None else make_inputs(before, 0, 4, None)
    refs, _ = run(before, feed)
    outs, ran = run(after, adapt(feed, after))
    if refs is None or outs is None:
        return Check(name, FAIL, f"a forward pass failed: {ran.detail}")
    check = compare_outputs(outs, refs, atol, 0.0, None)
    return Check(name, check.status, check.detail, check.data)


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"
