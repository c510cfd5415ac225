"""``--compress``: outputs whose zeros and repeated values cost little (HDF5 chunks with
gzip; a ``.keras`` weights member deflated), the same values as without it, loaded by
Keras and tf_keras; formats with no compressed form refuse it."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import SAMPLES, keras_quiet, load, run
from test_bad_input import assert_clean_error

import weightcli
from weightcli.digest import total_size


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4 MiB float32 model in every Keras format."""
    keras = keras_quiet()
    root = tmp_path_factory.mktemp("compress")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((512,)),
            keras.layers.Dense(1024),
            keras.layers.Dense(512),
            keras.layers.Dense(8),
        ]
    )
    out = {"keras": root / "m.keras", "h5": root / "m.h5", "weights": root / "m.weights.h5"}
    model.save(out["keras"])
    model.save(out["h5"])
    model.save_weights(out["weights"])
    model.save_weights(root / "s.weights.json", max_shard_size=0.002)  # GB: 2 MB shards
    out["sharded"] = root / "s.weights.json"
    keras.saving.save_model(model, root / "folder", zipped=False)
    out["folder"] = root / "folder"
    return out


@pytest.mark.parametrize("kind", ["keras", "h5", "weights", "sharded", "folder"])
def test_prune_then_compress_makes_the_file_much_smaller(models, tmp_path: Path, kind: str) -> None:
    src = models[kind]
    name = src.name
    plain, packed = tmp_path / "plain" / name, tmp_path / "packed" / name
    plain.parent.mkdir()
    packed.parent.mkdir()
    assert run("prune", src, "--sparsity", "0.5", "-o", plain).code == 0
    res = run("prune", src, "--sparsity", "0.5", "--compress", "-o", packed, "--json")
    assert res.code == 0, res.err
    before, after = total_size(src), total_size(packed)
    assert after <= 0.6 * before, (before, after)  # at least 40% smaller
    doc = res.json()
    assert (doc["size_before"], doc["size_after"]) == (before, after)
    assert run("diff", plain, packed).code == 0  # the same values
    # the premise: stored compressed
    if kind == "keras":
        with zipfile.ZipFile(packed) as z:
            assert z.getinfo("model.weights.h5").compress_type == zipfile.ZIP_DEFLATED
    else:
        h5 = packed / "model.weights.h5" if kind == "folder" else packed
        if kind == "sharded":
            h5 = sorted(packed.parent.glob("*.weights.h5"))[0]
        with h5py.File(h5) as f:
            kinds: list[str | None] = []
            f.visititems(
                lambda n, o: (
                    kinds.append(o.compression)
                    if isinstance(o, h5py.Dataset) and o.size >= 4096
                    else None
                )
            )
            assert kinds and set(kinds) == {"gzip"}


def test_keras_loads_compressed_outputs(models, tmp_path: Path) -> None:
    keras = keras_quiet()
    x = np.random.default_rng(0).standard_normal((4, 512)).astype("float32")
    for kind in ("keras", "h5"):
        plain, packed = tmp_path / f"p.{models[kind].name}", tmp_path / f"c.{models[kind].name}"
        assert run("prune", models[kind], "--sparsity", "0.5", "-o", plain).code == 0
        assert run("prune", models[kind], "--sparsity", "0.5", "--compress", "-o", packed).code == 0
        a = keras.models.load_model(plain, compile=False)
        b = keras.models.load_model(packed, compile=False)
        np.testing.assert_array_equal(np.asarray(a(x)), np.asarray(b(x)))


def test_tf_keras_loads_a_compressed_legacy_h5(tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    assert (
        run("prune", SAMPLES / "mlp_tfkeras.h5", "--sparsity", "0.5", "--compress", "-o", out).code
        == 0
    )
    model = load(out, "tfkeras-full")
    with weightcli.open(out) as ckpt:
        kernel = ckpt.array("dense_1/kernel")
    np.testing.assert_array_equal(model.get_layer("dense_1").get_weights()[0], kernel)


def test_a_compressed_output_reads_and_patches_again(models, tmp_path: Path) -> None:
    packed = tmp_path / "c.h5"
    assert run("prune", models["h5"], "--sparsity", "0.5", "--compress", "-o", packed).code == 0
    again = tmp_path / "again.h5"
    assert run("scale", packed, "2", "-o", again).code == 0
    with weightcli.open(packed) as a, weightcli.open(again) as b:
        for t in a.tensors():
            if t.optimizer or not t.is_float:
                continue
            np.testing.assert_array_equal(b.array(t.name), a.array(t.name) * np.float32(2))


def test_compressing_in_place_rewrites_even_without_a_change(models, tmp_path: Path) -> None:
    target = shutil.copy(models["weights"], tmp_path / "w.weights.h5")
    before = total_size(target)
    res = run("clip", target, "--abs-max", "1000", "--compress", "--in-place")
    assert res.code == 0, res.err
    assert "untouched" not in res.out and total_size(target) < before  # compressed, not skipped


@pytest.mark.parametrize("name", ["mlp_export", "mlp_ckpt"])
def test_formats_without_a_compressed_form_refuse(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    res = run("prune", SAMPLES / name, "--sparsity", "0.5", "--compress", "-o", out)
    assert_clean_error(res, "--compress", "no compressed form")
    assert not list(tmp_path.iterdir())


def test_freeze_and_keras_int8_honour_compress_and_digest(models, tmp_path: Path) -> None:
    """Every writing command takes --compress and --digest: none ignores them."""
    out = tmp_path / "f.keras"
    res = run(
        "freeze", models["keras"], "-s", "dense*", "--compress", "--digest", "sha256", "-o", out
    )
    assert res.code == 0, res.err
    with zipfile.ZipFile(out) as z:
        assert z.getinfo("model.weights.h5").compress_type == zipfile.ZIP_DEFLATED
    history = run("inspect", out, "--json", "--no-stats").json()["history"][-1]
    assert history["source_digest"]["serialization"]["hash_type"] == "sha256"
    q = tmp_path / "q.keras"
    res = run("quantize", models["keras"], "--store", "keras-int8", "--compress", "-o", q)
    assert res.code == 0, res.err
    with zipfile.ZipFile(q) as z:
        assert z.getinfo("model.weights.h5").compress_type == zipfile.ZIP_DEFLATED
