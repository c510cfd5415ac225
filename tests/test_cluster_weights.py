"""``cluster``: exact 1-D k-means per tensor (or per channel), against an independent
numpy Lloyd (nearest centroid by distance, means, to convergence); the result does not
depend on the block size; Keras loads the output and computes what its weights do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import SAMPLES, run
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bad_input import assert_clean_error

import weightcli
from weightcli.commands import transform as transform_cmd
from weightcli.params import OutputSpec
from weightcli.select import Selection
from weightcli.steps import ClusterStep

KERNELS = ["dense_1/kernel", "dense_2/kernel", "logits/kernel"]


def lloyd(x: np.ndarray, k: int) -> np.ndarray:
    """The oracle: linear initialisation, then Lloyd by distances until nothing moves."""
    v = x.astype(np.float64).ravel()
    c = np.unique(np.linspace(v.min(), v.max(), k))
    for _ in range(300):
        idx = np.argmin(np.abs(v[:, None] - c[None, :]), axis=1)  # ties: the lower one
        new = np.array([v[idx == i].mean() if (idx == i).any() else c[i] for i in range(c.size)])
        new = np.unique(new)
        if new.size == c.size and np.array_equal(new, c):
            break
        c = new
    idx = np.argmin(np.abs(v[:, None] - c[None, :]), axis=1)
    return c[idx].astype(x.dtype).reshape(x.shape)


def _arrays(path: Path, names: list[str]) -> list[np.ndarray]:
    with weightcli.open(path) as ckpt:
        return [ckpt.array(n) for n in names]


def test_each_tensor_as_the_oracle(tmp_path: Path) -> None:
    src, out = SAMPLES / "mlp.keras", tmp_path / "c.keras"
    res = run("cluster", src, "-k", "8", "--init", "linear", "-o", out, "--json")
    assert res.code == 0, res.err
    for name, before, after in zip(
        KERNELS, _arrays(src, KERNELS), _arrays(out, KERNELS), strict=True
    ):
        np.testing.assert_array_equal(after, lloyd(before, 8), err_msg=name)
        assert np.unique(after).size <= 8
    fig = res.json()["tensors"][0]["figures"][0]
    assert fig["distinct"] == np.unique(_arrays(out, KERNELS[:1])[0]).size
    assert fig["iterations"] >= 1 and fig["sqnr_db"] > 0


def test_per_channel_as_the_oracle(tmp_path: Path) -> None:
    src, out = SAMPLES / "mlp.keras", tmp_path / "c.keras"
    assert run("cluster", src, "-k", "3", "--per-channel", "--init", "linear", "-o", out).code == 0
    for before, after in zip(_arrays(src, KERNELS), _arrays(out, KERNELS), strict=True):
        for c in range(before.shape[-1]):  # Dense: output channels on the last axis
            np.testing.assert_array_equal(after[:, c], lloyd(before[:, c], 3))


@settings(max_examples=25, deadline=None)
@given(
    shape=st.sampled_from([(7, 5), (30, 4), (2, 3, 4, 6)]),
    k=st.integers(2, 9),
    init=st.sampled_from(["kmeans++", "linear", "density"]),
    per_channel=st.booleans(),
    block=st.integers(1, 40),
    seed=st.integers(0, 1000),
)
def test_block_size_does_not_matter(
    tmp_path_factory, shape, k, init, per_channel, block, seed
) -> None:
    from safetensors.numpy import save_file

    tmp = tmp_path_factory.mktemp("c")
    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    save_file({"k.weight": w}, str(tmp / "m.safetensors"))
    results = []
    for elems in (1 << 18, block):
        out = tmp / f"o{elems}.safetensors"
        step = ClusterStep(
            Selection(), clusters=k, per_channel=per_channel, init=init,
            seed=seed if init == "kmeans++" else None,
        )  # fmt: skip
        request = transform_cmd.TransformRequest(
            steps=(step,), command="cluster", block_elems=elems, out=OutputSpec(output=out)
        )
        transform_cmd.run(request, tmp / "m.safetensors")
        with weightcli.open(out) as ckpt:
            results.append(ckpt.array("k.weight"))
    np.testing.assert_array_equal(results[0], results[1])
    limit = k * (shape[-1] if per_channel else 1)
    assert np.unique(results[0]).size <= limit


def test_a_clustered_model_loads_and_computes_what_its_weights_do(tmp_path: Path) -> None:
    from helpers import keras_quiet

    keras = keras_quiet()
    out = tmp_path / "c.keras"
    assert run("cluster", SAMPLES / "mlp.keras", "-k", "4", "--init", "linear", "-o", out).code == 0
    x = np.random.default_rng(0).standard_normal((8, 20)).astype("float32")
    reference = keras.models.load_model(SAMPLES / "mlp.keras", compile=False)
    weights = []
    for layer in reference.layers:
        for v in layer.weights:
            arr = np.asarray(v)
            weights.append(lloyd(arr, 4) if v.path.endswith("kernel") else arr)
    reference.set_weights(weights)
    clustered = keras.models.load_model(out, compile=False)
    np.testing.assert_allclose(np.asarray(clustered(x)), np.asarray(reference(x)), atol=1e-6)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("-k", "1"), "clusters"),
        (("--seed", "-1"), "seed"),
        (("--init", "linear", "--seed", "3"), "takes none"),  # never ignored
    ],
)
def test_bad_requests(tmp_path: Path, args, words) -> None:
    assert_clean_error(
        run("cluster", SAMPLES / "mlp.keras", *args, "-o", tmp_path / "x.keras"), words
    )
    assert not list(tmp_path.iterdir())


def test_nan_is_refused(tmp_path: Path) -> None:
    res = run("cluster", SAMPLES / "mlp_nan.h5", "-o", tmp_path / "x.h5")
    assert_clean_error(res, "NaN")
    assert not list(tmp_path.iterdir())


def test_inspect_counts_the_values_a_clustered_tensor_holds(tmp_path: Path) -> None:
    out = tmp_path / "c.keras"
    assert run("cluster", SAMPLES / "mlp.keras", "-k", "5", "-o", out).code == 0
    doc = run("inspect", out, "--json").json()
    by = {t["name"]: t for t in doc["tensors"]}
    for name, arr in zip(KERNELS, _arrays(out, KERNELS), strict=True):
        assert by[name]["distinct"] == np.unique(arr).size <= 5
    before = {
        t["name"]: t for t in run("inspect", SAMPLES / "mlp.keras", "--json").json()["tensors"]
    }
    assert "distinct" not in before["dense_1/kernel"]  # 640 different values: not counted
    assert "Distinct" in run("inspect", out).out
