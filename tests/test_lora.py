"""``lora merge`` / ``lora extract``: Keras's LoRA layers and KerasHub's adapter files
are the oracles (a LoRA-enabled model's predictions, KerasHub's own merged save and its
load_lora_weights), and numpy's SVD for what an extract keeps."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import keras_quiet, run

import weightcli


def arrays(path: Path) -> dict[str, np.ndarray]:
    with weightcli.open(path) as ckpt:
        return {t.name: ckpt.array(t.name) for t in ckpt.tensors() if not t.optimizer}


def write_adapter(
    path: Path, rank: int, entries: dict[int, tuple[str, np.ndarray, np.ndarray]]
) -> None:
    """KerasHub's layout (Backbone.save_lora_weights), written with h5py."""
    with h5py.File(path, "w") as f:
        f.create_group("lora/vars").create_dataset("rank", data=np.int64(rank))
        for i, (prefix, a, b) in entries.items():
            g = f.create_group(f"lora/{i}/vars")
            g.create_dataset(f"{prefix}_a", data=a)
            g.create_dataset(f"{prefix}_b", data=b)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A Keras 3 model with Embedding, EinsumDense and Dense layers, saved plain; then
    LoRA enabled on all three with known factors: its predictions, and the adapter."""
    keras = keras_quiet()
    d = tmp_path_factory.mktemp("lora")
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,), dtype="int32")
    x = keras.layers.Embedding(20, 8, name="emb")(inp)
    x = keras.layers.EinsumDense("abc,cd->abd", output_shape=(5, 6), bias_axes="d", name="ein")(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(3, name="head")(x)
    model = keras.Model(inp, out)
    model.save(d / "base.keras")
    rng = np.random.default_rng(0)
    layers = [ly for ly in model._flatten_layers(include_self=False) if ly.weights]
    entries = {}
    for i, layer in enumerate(layers):
        layer.enable_lora(2, lora_alpha=2)
        prefix = "lora_embeddings" if layer.name == "emb" else "lora_kernel"
        a_var, b_var = getattr(layer, f"{prefix}_a"), getattr(layer, f"{prefix}_b")
        a = rng.normal(scale=0.2, size=a_var.shape).astype("float32")
        b = rng.normal(scale=0.2, size=b_var.shape).astype("float32")
        a_var.assign(a)
        b_var.assign(b)
        entries[i] = (prefix, a, b)
    write_adapter(d / "a.lora.h5", 2, entries)
    x = rng.integers(0, 20, size=(4, 5)).astype("int32")
    return d, x, model.predict(x, verbose=0), [ly.name for ly in layers]


def test_merged_checkpoint_predicts_what_the_lora_model_predicts(small, tmp_path: Path) -> None:
    d, x, want, _ = small
    keras = keras_quiet()
    out = tmp_path / "merged.keras"
    res = run("lora", "merge", d / "base.keras", d / "a.lora.h5", "-o", out, "--json")
    assert res.code == 0, res.err
    doc = res.json()
    changed = {t["name"] for t in doc["tensors"] if t["changed"]}
    assert changed == {"emb/embeddings", "ein/kernel", "head/kernel"}
    norms = [t["figures"][0]["update_norm"] for t in doc["tensors"] if t["changed"]]
    assert all(n > 0 for n in norms)
    got = keras.models.load_model(out, compile=False).predict(x, verbose=0)
    plain = keras.models.load_model(d / "base.keras", compile=False).predict(x, verbose=0)
    assert np.abs(plain - want).max() > 1e-2  # the adapter matters
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # surgery: the biases are the base's bytes
    base, merged = arrays(d / "base.keras"), arrays(out)
    assert merged["ein/bias"].tobytes() == base["ein/bias"].tobytes()


def test_alpha_scales_the_update(small, tmp_path: Path) -> None:
    d, *_ = small
    out1, out2 = tmp_path / "one.keras", tmp_path / "half.keras"
    assert run("lora", "merge", d / "base.keras", d / "a.lora.h5", "-o", out1).code == 0
    assert (
        run("lora", "merge", d / "base.keras", d / "a.lora.h5", "--alpha", "1", "-o", out2).code
        == 0
    )
    base, one, half = arrays(d / "base.keras"), arrays(out1), arrays(out2)
    np.testing.assert_allclose(
        half["head/kernel"] - base["head/kernel"],
        (one["head/kernel"] - base["head/kernel"]) / 2,
        atol=1e-6,
    )


def test_extract_then_merge_gives_back_a_rank_r_change(small, tmp_path: Path) -> None:
    d, *_ = small
    keras = keras_quiet()
    model = keras.models.load_model(d / "base.keras", compile=False)
    rng = np.random.default_rng(5)
    for layer in model.layers:
        for v in layer.weights:
            if v.name in ("kernel", "embeddings"):
                shape = v.shape
                m = int(np.prod(shape[:-1]))
                low = rng.normal(size=(m, 2)) @ rng.normal(size=(2, shape[-1]))  # rank 2
                v.assign((v.numpy() + 0.05 * low.reshape(shape)).astype("float32"))
            elif v.name == "bias" and layer.name == "head":
                v.assign(v.numpy() + 1.0)  # an adapter cannot carry this
    tuned = tmp_path / "tuned.keras"
    model.save(tuned)
    adapter = tmp_path / "x.lora.h5"
    res = run("lora", "extract", d / "base.keras", tuned, "--rank", "2", "-o", adapter, "--json")
    assert res.code == 0, res.err
    doc = res.json()
    assert doc["rank"] == 2 and doc["not_carried"] == ["head/bias"]
    assert {k["layer"] for k in doc["kernels"]} == {"emb", "ein", "head"}
    for k in doc["kernels"]:
        assert k["energy"] > 1 - 1e-9 and k["max_error"] < 1e-6  # exact at rank 2
    merged = tmp_path / "back.keras"
    assert run("lora", "merge", d / "base.keras", adapter, "-o", merged).code == 0
    got, want = arrays(merged), arrays(tuned)
    for k in doc["kernels"]:
        err = np.abs(got[k["tensor"]].astype(np.float64) - want[k["tensor"]]).max()
        assert err <= k["max_error"] + 1e-6, k
    # a lower rank keeps less, and says so against numpy's SVD
    res = run(
        "lora",
        "extract",
        d / "base.keras",
        tuned,
        "--rank",
        "1",
        "-o",
        tmp_path / "r1.lora.h5",
        "--json",
    )
    head = next(k for k in res.json()["kernels"] if k["layer"] == "head")
    diff = (
        want["head/kernel"].astype(np.float64) - arrays(d / "base.keras")["head/kernel"]
    ).reshape(-1, 3)
    s = np.linalg.svd(diff, compute_uv=False)
    assert head["energy"] == pytest.approx(s[0] ** 2 / np.sum(s**2), rel=1e-6)
    # --energy picks the smallest rank that keeps it everywhere
    res = run(
        "lora",
        "extract",
        d / "base.keras",
        tuned,
        "--energy",
        "0.999999",
        "-o",
        tmp_path / "e.lora.h5",
        "--json",
    )
    assert res.code == 0 and res.json()["rank"] == 2


def test_keras_hub_adapter_merges_as_keras_hub_merges_it(tmp_path: Path) -> None:
    """An adapter written by KerasHub's save_lora_weights: weightcli's merge equals
    KerasHub's merged save, and an extract loads back with load_lora_weights."""
    keras = keras_quiet()
    import keras_hub

    bb = keras_hub.models.BertBackbone(
        vocabulary_size=30,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=8,
    )
    bb.save(tmp_path / "base.keras")
    bb.enable_lora(2)
    rng = np.random.default_rng(1)
    for v in bb.weights:
        if "lora" in v.path:
            v.assign(rng.normal(scale=0.1, size=v.shape).astype("float32"))
    bb.save_lora_weights(str(tmp_path / "hub.lora.h5"))
    bb.save(tmp_path / "hub_merged.keras")  # Keras merges the LoRA into the kernels
    out = tmp_path / "ours.keras"
    res = run(
        "lora", "merge", tmp_path / "base.keras", tmp_path / "hub.lora.h5", "-o", out, "--json"
    )
    assert res.code == 0, res.err
    assert sum(bool(t["changed"]) for t in res.json()["tensors"]) == 4  # query, value x 2 layers
    ours, theirs = arrays(out), arrays(tmp_path / "hub_merged.keras")
    assert ours.keys() == theirs.keys()
    for k in ours:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-6, atol=1e-7, err_msg=k)
    # extract it back; KerasHub loads the adapter and predicts as the merged model
    adapter = tmp_path / "back.lora.h5"
    res = run(
        "lora",
        "extract",
        tmp_path / "base.keras",
        tmp_path / "hub_merged.keras",
        "--rank",
        "2",
        "-o",
        adapter,
        "--json",
    )
    assert res.code == 0, res.err
    names = res.json()["target_layer_names"]
    assert names == ["query", "value"]
    fresh = keras.saving.load_model(tmp_path / "base.keras")
    fresh.enable_lora(2, target_layer_names=names)
    fresh.load_lora_weights(str(adapter))
    feed = {
        "token_ids": np.array([[1, 2, 3, 4]]),
        "segment_ids": np.zeros((1, 4), "int32"),
        "padding_mask": np.ones((1, 4), "int32"),
    }
    ref = keras.saving.load_model(tmp_path / "hub_merged.keras").predict(feed, verbose=0)
    base = keras.saving.load_model(tmp_path / "base.keras").predict(feed, verbose=0)
    got = fresh.predict(feed, verbose=0)
    assert np.abs(base["sequence_output"] - ref["sequence_output"]).max() > 1e-3
    np.testing.assert_allclose(got["sequence_output"], ref["sequence_output"], atol=1e-5)


@pytest.mark.parametrize(
    "case,says",
    [
        ("index", "layers with weights"),
        ("shape", "do not fit"),
        ("not_adapter", "not a KerasHub LoRA adapter"),
        ("weights_only", "--architecture"),
        ("nan", "NaN"),
    ],
)
def test_bad_adapters_are_one_line(small, tmp_path: Path, case: str, says: str) -> None:
    d, _, _, names = small
    base = d / "base.keras"
    adapter = tmp_path / "bad.lora.h5"
    if case == "index":
        write_adapter(
            adapter,
            2,
            {len(names) + 3: ("lora_kernel", np.ones((4, 2), "f4"), np.ones((2, 3), "f4"))},
        )
    elif case == "shape":
        write_adapter(
            adapter,
            2,
            {names.index("head"): ("lora_kernel", np.ones((5, 2), "f4"), np.ones((2, 3), "f4"))},
        )
    elif case == "not_adapter":
        with h5py.File(adapter, "w") as f:
            f["x"] = np.ones(3)
    elif case == "nan":
        a = np.ones((30, 2), "f4")
        a[0, 0] = np.nan
        write_adapter(adapter, 2, {names.index("head"): ("lora_kernel", a, np.ones((2, 3), "f4"))})
    else:
        adapter = d / "a.lora.h5"
        import zipfile

        weights = tmp_path / "base.weights.h5"
        weights.write_bytes(zipfile.ZipFile(base).read("model.weights.h5"))
        base = weights
    out = tmp_path / "o.keras" if case != "weights_only" else tmp_path / "o.weights.h5"
    res = run("lora", "merge", base, adapter, "-o", out)
    assert res.code == 2 and says in res.err, res.err
    assert len(res.err.strip().splitlines()) == 1 and not out.exists()


def test_weights_only_base_with_its_architecture(small, tmp_path: Path) -> None:
    import zipfile

    d, x, want, _ = small
    weights = tmp_path / "base.weights.h5"
    weights.write_bytes(zipfile.ZipFile(d / "base.keras").read("model.weights.h5"))
    config = tmp_path / "config.json"
    config.write_text(json.dumps(json.loads(zipfile.ZipFile(d / "base.keras").read("config.json"))))
    out = tmp_path / "m.weights.h5"
    res = run("lora", "merge", weights, d / "a.lora.h5", "--architecture", config, "-o", out)
    assert res.code == 0, res.err
    keras = keras_quiet()
    model = keras.models.load_model(d / "base.keras", compile=False)
    model.load_weights(out)
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-5)


def test_extract_refusals(small, tmp_path: Path) -> None:
    d, *_ = small
    base = d / "base.keras"
    cases = [
        (["--rank", "2", "-o", tmp_path / "x.h5"], ".lora.h5"),
        (["--rank", "2", "--energy", "0.9", "-o", tmp_path / "x.lora.h5"], "one of them"),
        (["--rank", "2", "-o", tmp_path / "x.lora.h5"], "nothing to extract"),
        (["--rank", "2", "--target", "nope*", "-o", tmp_path / "x.lora.h5"], "nope"),
    ]
    for args, says in cases:
        res = run("lora", "extract", base, base, *args)
        assert res.code == 2 and says in res.err, (args, res.err)
        assert not (tmp_path / "x.lora.h5").exists()


@pytest.mark.parametrize("name", ["mlp.keras", "mlp_keras3.h5", "mlp_folder", "mlp_tfkeras.h5"])
def test_the_sample_adapter_written_by_keras_hub(tmp_path: Path, name: str) -> None:
    """sample_models/mlp.lora.h5 (KerasHub's save_lora_weights on the sample MLP, a
    compiled Sequential): each kernel becomes W + A @ B, numpy's product of the factors,
    in a .keras, a legacy .h5 (Keras 3's and tf.keras's: kernels found by name), a folder."""
    from helpers import SAMPLES

    out = tmp_path / name
    res = run("lora", "merge", SAMPLES / name, SAMPLES / "mlp.lora.h5", "-o", out)
    assert res.code == 0, res.err
    base, got = arrays(SAMPLES / name), arrays(out)
    with h5py.File(SAMPLES / "mlp.lora.h5") as f:
        factors = {
            k: (f[f"lora/{k}/vars/lora_kernel_a"][()], f[f"lora/{k}/vars/lora_kernel_b"][()])
            for k in f["lora"]
            if k != "vars"
        }
    assert sorted(factors) == ["0", "1"]
    for k, layer in (("0", "dense_1"), ("1", "dense_2")):
        a, b = factors[k]
        want = base[f"{layer}/kernel"].astype(np.float64) + a.astype(np.float64) @ b
        np.testing.assert_allclose(got[f"{layer}/kernel"], want, rtol=1e-6, atol=1e-7)
    assert got["logits/kernel"].tobytes() == base["logits/kernel"].tobytes()
