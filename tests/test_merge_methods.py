"""merge's methods (DARE, TIES, breadcrumbs, DELLA, SLERP, model stock) against the
whole-tensor numpy oracle of ``merge_oracle``, streamed in small blocks; merge files;
identical inputs; a Keras soup that predicts what the oracle's weights predict."""

from __future__ import annotations

import json
from pathlib import Path

import merge_oracle as oracle
import numpy as np
import pytest
from helpers import SAMPLES, keras_quiet, mlp_input, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from weightcli.commands import merge as merge_cmd
from weightcli.params import OutputSpec
from weightcli.stores import base as store_base

GTA = [
    "task-arithmetic",
    "ties",
    "dare-linear",
    "dare-ties",
    "breadcrumbs",
    "breadcrumbs-ties",
    "della",
    "della-linear",
]


def write(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path


def merge_files(
    tmp: Path, method: str, files: list[Path], base: Path | None, block: int, **kw
) -> dict[str, np.ndarray]:
    out = tmp / "out.safetensors"
    request = merge_cmd.MergeRequest(
        others=tuple(files[1:]),
        method=method,
        base=base,
        params=merge_cmd.MethodParams(**kw),
        out=OutputSpec(output=out, force=True),
        block_elems=block,
    )
    merge_cmd.run(request, files[0])
    return load_file(str(out))


shapes = st.sampled_from([(7,), (5, 6), (3, 4, 5), (64,), (9, 13)])


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(GTA),
    shape=shapes,
    n=st.integers(2, 3),
    data=st.data(),
)
def test_task_arithmetic_family_equals_the_oracle(
    tmp_path_factory, method: str, shape: tuple[int, ...], n: int, data
) -> None:
    tmp = tmp_path_factory.mktemp("gta")
    seed = data.draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    # float32 values on a coarse grid: ties among |d| happen, and must break the same way
    base = {"layer/kernel": rng.integers(-8, 8, size=shape).astype(np.float32) / 4}
    xs = [
        {
            "layer/kernel": base["layer/kernel"]
            + rng.integers(-6, 6, size=shape).astype(np.float32) / 4
        }
        for _ in range(n)
    ]
    density = data.draw(st.sampled_from([0.25, 0.5, 0.7, 1.0]))
    if method.startswith("della"):
        density = data.draw(st.sampled_from([0.4, 0.6]))
    weights = [data.draw(st.sampled_from([0.5, 1.0, 2.0])) for _ in range(n)]
    lam = data.draw(st.sampled_from([0.5, 1.0]))
    block = data.draw(st.sampled_from([3, 8, 64, 4096]))
    files = [write(tmp / f"x{i}.safetensors", x) for i, x in enumerate(xs)]
    bpath = write(tmp / "base.safetensors", base)
    kw = {"weights": tuple(weights), "lam": lam, "seed": 5}
    if method != "task-arithmetic":
        kw["density"] = density
    if method in ("task-arithmetic", "ties", "breadcrumbs", "breadcrumbs-ties"):
        kw.pop("seed")
    got = merge_files(tmp, method, files, bpath, block, **kw)["layer/kernel"]
    want = oracle.gta(
        method,
        "layer/kernel",
        base["layer/kernel"],
        [x["layer/kernel"] for x in xs],
        weights,
        [density if method != "task-arithmetic" else 1.0] * n,
        lam=lam,
        seed=5,
    ).astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=f"{method} {block}")


def test_slerp_and_model_stock_equal_the_oracle(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    shape = (40, 30)
    base = {
        "d/kernel": rng.normal(size=shape).astype(np.float32),
        "d/bias": rng.normal(size=30).astype(np.float32),
    }
    xs = [
        {k: (v + rng.normal(scale=0.3, size=v.shape)).astype(np.float32) for k, v in base.items()}
        for _ in range(3)
    ]
    files = [write(tmp_path / f"x{i}.safetensors", x) for i, x in enumerate(xs)]
    bpath = write(tmp_path / "b.safetensors", base)
    for t in (0.0, 0.3, 1.0):
        got = merge_files(tmp_path, "slerp", files[:2], None, 100, t=t)
        for k in base:
            np.testing.assert_allclose(
                got[k], oracle.slerp(t, xs[0][k], xs[1][k]).astype(np.float32), rtol=1e-6, atol=1e-6
            )
    got = merge_files(tmp_path, "model_stock", files, bpath, 100)
    for k in base:
        want = oracle.model_stock(base[k], [x[k] for x in xs]).astype(np.float32)
        np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-6)
    # near-parallel tensors: slerp falls back to linear interpolation
    near = write(tmp_path / "near.safetensors", {k: v * 1.0001 for k, v in xs[0].items()})
    got = merge_files(tmp_path, "slerp", [files[0], near], None, 100, t=0.5)
    np.testing.assert_allclose(
        got["d/bias"], (xs[0]["d/bias"] * 1.00005).astype(np.float32), rtol=1e-6
    )


def test_ties_over_the_old_limit_streams_in_passes(tmp_path: Path, monkeypatch) -> None:
    """TIES's magnitude threshold comes from a radix select over blocks: a tensor many
    blocks long (the old in-memory limit: 4 Mi elements) merges exactly as the oracle."""
    rng = np.random.default_rng(0)
    shape = (300, 70)
    base = {"w/kernel": rng.normal(size=shape).astype(np.float32)}
    xs = [
        {"w/kernel": base["w/kernel"] + rng.normal(size=shape).astype(np.float32)} for _ in range(2)
    ]
    files = [write(tmp_path / f"x{i}.safetensors", x) for i, x in enumerate(xs)]
    bpath = write(tmp_path / "b.safetensors", base)
    largest = []
    real = store_base.split

    def spy(shape, max_elems=store_base.BLOCK_ELEMS, align=None):
        for b in real(shape, max_elems, align):
            largest.append(b.size)
            yield b

    monkeypatch.setattr(store_base, "split", spy)
    got = merge_files(tmp_path, "ties", files, bpath, 700, density=0.2)["w/kernel"]
    assert (
        largest and max(largest) <= 700 and len(largest) >= 5 * 30
    )  # 4 radix passes and the merge, 30 blocks each
    want = oracle.gta(
        "ties", "w/kernel", base["w/kernel"], [x["w/kernel"] for x in xs], [1, 1], [0.2, 0.2]
    )
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "method,extra",
    [
        ("mean", {}),
        ("ema", {"decay": 0.7}),
        ("slerp", {"t": 0.4}),
        ("ties", {"density": 1.0}),
        ("model-stock", {}),
        ("breadcrumbs-ties", {"density": 1.0, "normalize": True}),
        ("della", {"density": 0.5, "normalize": True}),
    ],
)
def test_identical_inputs_give_back_the_input(tmp_path: Path, method: str, extra: dict) -> None:
    rng = np.random.default_rng(1)
    x = {
        "a/kernel": rng.normal(size=(6, 5)).astype(np.float32),
        "a/bias": rng.normal(size=5).astype(np.float32),
    }
    n = 2 if method == "slerp" else 3
    files = [write(tmp_path / f"x{i}.safetensors", x) for i in range(n)]
    base = None
    if method in ("ties", "model-stock", "breadcrumbs-ties", "della"):
        base = write(tmp_path / "b.safetensors", {k: v * 0.5 for k, v in x.items()})
    if method == "della":  # random drops rescaled: identical inputs agree only with base = x
        base = write(tmp_path / "b.safetensors", x)
    got = merge_files(tmp_path, method, files, base, 7, **extra)
    for k, v in x.items():
        assert got[k].tobytes() == v.tobytes(), (method, k)


def test_a_merge_file_with_gradients_and_filters(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    names = [f"l{i}/kernel" for i in range(5)]
    base = {n: rng.normal(size=(8, 8)).astype(np.float32) for n in names}
    xs = [
        {n: v + rng.normal(size=v.shape).astype(np.float32) for n, v in base.items()}
        for _ in range(2)
    ]
    for i, x in enumerate(xs):
        write(tmp_path / f"ft{i}.safetensors", x)
    write(tmp_path / "base.safetensors", base)
    (tmp_path / "merge.yaml").write_text(
        "merge_method: dare_ties\n"
        "base_model: base.safetensors\n"
        "models:\n"
        "  - model: base.safetensors\n"
        "  - model: ft0.safetensors\n"
        "    parameters:\n"
        "      weight: [1.0, 0.0]\n"
        "      density: 0.5\n"
        "  - model: ft1.safetensors\n"
        "    parameters:\n"
        "      weight:\n"
        "        - filter: 'l2*'\n"
        "          value: 2.0\n"
        "        - value: 1.0\n"
        "      density: [0.9, 0.3]\n"
        "parameters:\n"
        "  seed: 11\n"
        "  lambda: 0.8\n"
    )
    out = tmp_path / "merged.safetensors"
    res = run("merge", "--config", tmp_path / "merge.yaml", "-o", out, "--json")
    assert res.code == 0, res.err
    got = load_file(str(out))
    for i, n in enumerate(names):
        depth = i / 4
        w = [1.0 - depth, 2.0 if n.startswith("l2") else 1.0]
        dens = [0.5, 0.9 + (0.3 - 0.9) * depth]
        want = oracle.gta("dare-ties", n, base[n], [x[n] for x in xs], w, dens, lam=0.8, seed=11)
        np.testing.assert_allclose(got[n], want.astype(np.float32), rtol=1e-6, atol=1e-6, err_msg=n)
    step = res.json()["history"]["steps"][0]
    assert step["merge_file"]["content"]["merge_method"] == "dare_ties"
    assert [i["file"] for i in step["inputs"]] == ["ft0.safetensors", "ft1.safetensors"]


@pytest.mark.parametrize(
    "text,says",
    [
        (
            "merge_method: ties\nbase_model: b.safetensors\nmodels: [{model: a.safetensors, parameters: {density: 0.5, wieght: 1}}]\n",
            "wieght",
        ),
        (
            "merge_method: ties\nbase_model: b.safetensors\nmodels: [{model: a.safetensors, parameters: {density: [1.0, 1.5]}}]\n",
            "density",
        ),
        (
            "merge_method: ties\nbase_model: b.safetensors\nmodels: [{model: a.safetensors, parameters: {density: 0.5, weight: [{filter: nothere, value: 1}]}}]\n",
            "nothere",
        ),
        ("merge_method: soup\nmodels: [a.safetensors]\n", "merge_method"),
        (
            "merge_method: ties\nbase_model: b.safetensors\nmodels: [{model: a.safetensors}]\nslices: []\n",
            "slices",
        ),
        ("a: &x [1]\nb: *x\n", "aliases"),
        ("merge_method: ties\nmodels: [{model: a.safetensors}]\n", "--base"),
        ("merge_method: slerp\nmodels: [a.safetensors, b.safetensors]\n", "--t"),
        (
            "merge_method: della\nbase_model: b.safetensors\nmodels: [{model: a.safetensors, parameters: {density: 0.1, epsilon: 0.2}}]\n",
            "epsilon",
        ),
        ("[unclosed\n", "YAML"),
        ("merge_method: " + "[" * 50000 + "]" * 50000 + "\n", "m.yaml: nested too deeply"),
    ],
)
def test_a_bad_merge_file_is_one_line_before_anything_is_read(
    tmp_path: Path, text: str, says: str
) -> None:
    x = {"a/kernel": np.ones((4, 4), np.float32)}
    write(tmp_path / "a.safetensors", x)
    write(tmp_path / "b.safetensors", x)
    (tmp_path / "m.yaml").write_text(text)
    out = tmp_path / "o.safetensors"
    res = run("merge", "--config", tmp_path / "m.yaml", "-o", out)
    assert res.code == 2 and says in res.err, res.err
    assert len(res.err.strip().splitlines()) == 1 and not out.exists()


def test_flag_mistakes(tmp_path: Path) -> None:
    a = SAMPLES / "mlp.keras"
    cases = [
        (["--method", "slerp"], "--t"),
        (["--method", "slerp", "--t", "1.5"], "--t"),
        (["--method", "dare-ties", "--base", a, "--gamma", "0.1"], "--gamma"),
        (["--method", "mean", "--seed", "1"], "--seed"),
        (["--method", "nope"], "--method"),
        (["--method", "model-stock"], "--base"),
    ]
    for args, says in cases:
        res = run("merge", a, a, *args, "-o", tmp_path / "o.keras")
        assert res.code == 2 and says in res.err, (args, res.err)
    res = run("merge", a, "--config", tmp_path / "m.yaml", "-o", tmp_path / "o.keras")
    assert res.code == 2 and "no inputs" in res.err


def test_keras_runs_a_dare_and_a_slerp_soup(tmp_path: Path) -> None:
    """Merged .keras files load in Keras and predict what the oracle's weights predict."""
    keras = keras_quiet()
    model = keras.models.load_model(SAMPLES / "mlp.keras", compile=False)
    rng = np.random.default_rng(4)
    tuned = []
    for i in range(2):
        m = keras.models.clone_model(model)
        m.set_weights(
            [w + rng.normal(scale=0.05, size=w.shape).astype(w.dtype) for w in model.get_weights()]
        )
        tuned.append(tmp_path / f"ft{i}.keras")
        m.save(tuned[-1])
    x = mlp_input()
    base_w = model.get_weights()
    names = [v.path for v in model.weights]
    tuned_w = [keras.models.load_model(p, compile=False).get_weights() for p in tuned]
    layer_names = {v.path: f"{v.path.split('/')[0]}/{v.name}" for v in model.weights}
    dare = tmp_path / "dare.keras"
    res = run(
        "merge",
        *tuned,
        "--method",
        "dare_ties",
        "--base",
        SAMPLES / "mlp.keras",
        "--density",
        "0.6",
        "--seed",
        "3",
        "-o",
        dare,
    )
    assert res.code == 0, res.err
    slerp = tmp_path / "slerp.keras"
    res = run("merge", *tuned, "--method", "slerp", "--t", "0.35", "-o", slerp)
    assert res.code == 0, res.err
    for out, fn in (
        (
            dare,
            lambda i, n: oracle.gta(
                "dare-ties",
                layer_names[n],
                base_w[i],
                [t[i] for t in tuned_w],
                [1, 1],
                [0.6, 0.6],
                seed=3,
            ),
        ),
        (slerp, lambda i, n: oracle.slerp(0.35, tuned_w[0][i], tuned_w[1][i])),
    ):
        want = keras.models.clone_model(model)
        want.set_weights([fn(i, n).astype(np.float32) for i, n in enumerate(names)])
        got = keras.models.load_model(out, compile=False)
        np.testing.assert_allclose(
            got.predict(x, verbose=0), want.predict(x, verbose=0), rtol=1e-5, atol=1e-6
        )
    assert json.loads(
        run(
            "merge",
            *tuned,
            "--method",
            "slerp",
            "--t",
            "0.35",
            "-o",
            tmp_path / "s2.keras",
            "--json",
        ).out
    )["tensors"][0]["figures"][0]["coefficients"]
