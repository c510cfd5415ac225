"""Today's Keras 3 files: sharded weights (.weights.json), unzipped model folders, and a
SavedModel folder whose saved_model.pb went missing. Keras loading the outputs is the
oracle."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from helpers import SAMPLES, keras_quiet, run

import weightcli

SHARDED = SAMPLES / "mlp_sharded" / "mlp.weights.json"
FOLDER = SAMPLES / "mlp_folder"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _model_with(weights: Path):
    keras = keras_quiet()
    model = keras.models.load_model(SAMPLES / "mlp.keras", compile=False)
    model.load_weights(weights)
    return model


def test_sharded_weights_read_as_one_model() -> None:
    shards = json.loads(SHARDED.read_text())["weight_map"]
    assert len({s for v in shards.values() for s in v}) > 1  # premise: really sharded
    res = run("diff", SHARDED, SAMPLES / "mlp.keras", "--json")
    assert res.code == 0, res.out
    assert res.json()["counts"] == {"identical": 6}
    model = _model_with(SHARDED)
    with weightcli.open(SHARDED) as ckpt:
        for layer in model.layers:
            for w in layer.weights:
                name = f"{layer.name}/{w.path.rsplit('/', 1)[-1]}"
                np.testing.assert_array_equal(ckpt.array(name), np.asarray(w))


def test_sharded_transform_patches_only_changed_shards(tmp_path: Path) -> None:
    out = tmp_path / "half.weights.json"
    res = run("scale", SHARDED, "0.5", "-s", "logits", "-o", out, "--json")
    assert res.code == 0, res.err
    doc = json.loads(out.read_text())
    new_shards = sorted({s for v in doc["weight_map"].values() for s in v})
    assert all(s.startswith("half_") for s in new_shards)
    assert doc["weightcli_history"][-1]["changed"] == ["logits/kernel", "logits/bias"]
    # Shards without a logits tensor are byte copies of the source's.
    src_map = json.loads(SHARDED.read_text())["weight_map"]
    logits_groups = {g for g in src_map if g.startswith("/layers/") and "dense_2" in g}
    for group, shards in src_map.items():
        if group in logits_groups or group.startswith("/optimizer"):
            continue
        for old, new in zip(shards, doc["weight_map"][group], strict=True):
            if not any(old in src_map[g] for g in logits_groups):
                assert sha(SHARDED.parent / old) == sha(out.parent / new)
    before, after = _model_with(SHARDED), _model_with(out)
    for layer in before.layers:
        for w0, w1 in zip(layer.weights, after.get_layer(layer.name).weights, strict=True):
            want = np.asarray(w0) * (0.5 if layer.name == "logits" else 1.0)
            np.testing.assert_allclose(np.asarray(w1), want, rtol=1e-7)


def test_sharded_map_naming_bad_shards_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(SHARDED.parent, folder)
    doc = json.loads((folder / SHARDED.name).read_text())
    first_group = next(iter(doc["weight_map"]))
    missing = dict(doc, weight_map={**doc["weight_map"], first_group: ["gone.weights.h5"]})
    (folder / "missing.weights.json").write_text(json.dumps(missing))
    escape = dict(doc, weight_map={**doc["weight_map"], first_group: ["../x.weights.h5"]})
    (folder / "escape.weights.json").write_text(json.dumps(escape))
    for name, why in (("missing", "missing"), ("escape", "outside the map's folder")):
        res = run("inspect", folder / f"{name}.weights.json")
        assert res.code == 2 and why in res.err, res.err


def test_unzipped_model_folder(tmp_path: Path) -> None:
    assert run("diff", FOLDER, SAMPLES / "mlp.keras").code == 0
    out = tmp_path / "half"
    res = run("scale", FOLDER, "0.5", "-s", "dense_1", "-o", out)
    assert res.code == 0, res.err
    for name in ("config.json", "metadata.json"):
        assert sha(out / name) == sha(FOLDER / name)
    keras = keras_quiet()
    before = keras.models.load_model(FOLDER, compile=False)
    after = keras.models.load_model(out, compile=False)
    np.testing.assert_allclose(
        np.asarray(after.get_layer("dense_1").kernel),
        0.5 * np.asarray(before.get_layer("dense_1").kernel),
        rtol=1e-7,
    )
    np.testing.assert_array_equal(
        np.asarray(after.get_layer("logits").kernel), np.asarray(before.get_layer("logits").kernel)
    )


def test_savedmodel_folder_without_its_graph(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(SAMPLES / "mlp_export", folder)
    (folder / "saved_model.pb").rename(folder / "model_1.pb")
    res = run("inspect", folder, "--json", "--no-stats")
    assert res.code == 0, res.err
    assert res.json()["format"] == "tf-checkpoint"
    assert run("diff", folder, SAMPLES / "mlp_export").code == 0
    text = run("inspect", folder, "--no-stats").out
    assert "no saved_model.pb" in text
    ver = run("verify", folder, "--json").json()
    loads = next(c for c in ver["checks"] if c["name"] == "loads")
    assert loads["status"] == "SKIP" and "cannot load" in loads["detail"]


def test_recursive_search_finds_each_new_model_once() -> None:
    res = run("inspect", "-r", SAMPLES, "--no-stats", "--json")
    paths = [d["path"] for d in res.lines()[:-1]]
    assert str(SHARDED) in paths and str(FOLDER) in paths
    assert not any("mlp_sharded/mlp_0000" in p for p in paths)
    assert not any(p.startswith(str(FOLDER) + "/") for p in paths)
