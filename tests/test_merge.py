"""``merge``: each method against a numpy oracle, Keras running a soup, and bad input."""

from __future__ import annotations

import hashlib
from pathlib import Path

import blake3
import merge_oracle
import numpy as np
import pytest
from helpers import SAMPLES, keras_quiet, mlp_input, run

import weightcli

NAMES = [
    "dense_1/kernel",
    "dense_1/bias",
    "dense_2/kernel",
    "dense_2/bias",
    "logits/kernel",
    "logits/bias",
]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> list[Path]:
    """Three short fine-tunes of the sample MLP from the same start."""
    keras = keras_quiet()
    d = tmp_path_factory.mktemp("merge")
    out = []
    for seed in range(3):
        keras.utils.set_random_seed(seed)
        model = keras.models.load_model(SAMPLES / "mlp.keras", compile=False)
        model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(64, 20)).astype("float32")
        y = rng.integers(0, 3, size=64)
        model.fit(x, y, epochs=2, verbose=0)
        out.append(d / f"ft{seed}.keras")
        model.save(out[-1])
    return out


def arrays(path: Path) -> dict[str, np.ndarray]:
    with weightcli.open(path) as ckpt:
        return {n: ckpt.array(n) for n in NAMES}


def ties_oracle(base: np.ndarray, xs: list[np.ndarray], density: float, lam: float) -> np.ndarray:
    return merge_oracle.gta("ties", "", base, xs, [1.0] * len(xs), [density] * len(xs), lam=lam)


def test_each_method_equals_numpy(tuned: list[Path], tmp_path: Path) -> None:
    xs = [arrays(p) for p in tuned]
    base = arrays(SAMPLES / "mlp.keras")
    cases = {
        "mean": ([], lambda n: sum(x[n].astype(np.float64) for x in xs) / 3),
        "weighted": (
            ["--weights", "1,2,5"],
            lambda n: (1 * xs[0][n].astype(np.float64) + 2 * xs[1][n] + 5 * xs[2][n]) / 8,
        ),
        "ema": (
            ["--method", "ema", "--decay", "0.8"],
            lambda n: 0.8 * (0.8 * xs[0][n].astype(np.float64) + 0.2 * xs[1][n]) + 0.2 * xs[2][n],
        ),
        "task": (
            [
                "--method",
                "task-arithmetic",
                "--base",
                str(SAMPLES / "mlp.keras"),
                "--lambda",
                "0.5",
            ],
            lambda n: (
                base[n].astype(np.float64)
                + 0.5 * sum(x[n].astype(np.float64) - base[n] for x in xs)
            ),
        ),
        "ties": (
            ["--method", "ties", "--base", str(SAMPLES / "mlp.keras"), "--density", "0.3"],
            lambda n: ties_oracle(base[n], [x[n] for x in xs], 0.3, 1.0),
        ),
    }
    for label, (args, want) in cases.items():
        out = tmp_path / f"{label}.keras"
        res = run("merge", *tuned, *args, "-o", out, "--json")
        assert res.code == 0, (label, res.err)
        got = arrays(out)
        for n in NAMES:
            np.testing.assert_allclose(
                got[n],
                np.asarray(want(n)).astype(np.float32),
                rtol=1e-6,
                atol=1e-7,
                err_msg=f"{label} {n}",
            )
        if label == "ties":
            fig = res.json()["tensors"][0]["figures"][0]
            assert 0 < fig["kept_fraction"] <= 0.30 and 0 <= fig["sign_agreement"] <= 1
        history = res.json()["history"]["steps"][0]
        assert [i["file"] for i in history["inputs"]] == [p.name for p in tuned]
        assert all(
            i["digest"]["resources"][0]["digest"] == blake3.blake3(p.read_bytes()).hexdigest()
            for i, p in zip(history["inputs"], tuned, strict=True)
        )


def test_copies_of_one_model_give_back_its_bytes(tmp_path: Path) -> None:
    out = tmp_path / "same.keras"
    res = run(
        "merge", SAMPLES / "mlp.keras", SAMPLES / "mlp.keras", SAMPLES / "mlp.keras", "-o", out
    )
    assert res.code == 0
    for n in NAMES:
        a, b = arrays(out)[n], arrays(SAMPLES / "mlp.keras")[n]
        assert hashlib.sha256(a.tobytes()).digest() == hashlib.sha256(b.tobytes()).digest()


def test_cross_format_mean_is_either_twin(tmp_path: Path) -> None:
    out = tmp_path / "x.h5"
    assert run("merge", SAMPLES / "mlp_keras3.h5", SAMPLES / "mlp.keras", "-o", out).code == 0
    assert run("diff", out, SAMPLES / "mlp.keras").code == 0
    assert run("diff", out, SAMPLES / "mlp_keras3.h5").code == 0


def test_keras_runs_the_soup(tuned: list[Path], tmp_path: Path) -> None:
    keras = keras_quiet()
    out = tmp_path / "soup.keras"
    assert run("merge", *tuned, "-o", out).code == 0
    models = [keras.models.load_model(p, compile=False) for p in tuned]
    average = keras.models.load_model(tuned[0], compile=False)
    average.set_weights(
        [
            np.mean([m.get_weights()[i] for m in models], axis=0)
            for i in range(len(models[0].get_weights()))
        ]
    )
    soup = keras.models.load_model(out, compile=False)
    x = mlp_input()
    np.testing.assert_allclose(np.asarray(soup(x)), np.asarray(average(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["{mlp}"], "at least two"),
        (["{mlp}", "{cnn}"], "do not agree"),
        (["{mlp}", "{mlp}", "--weights", "1,2,3"], "3 weights for 2 inputs"),
        (["{mlp}", "{mlp}", "--weights", "1,-1"], "sum is not 0"),
        (["{mlp}", "{mlp}", "--method", "ema", "--decay", "1.5"], "--decay must be in (0, 1)"),
        (["{mlp}", "{mlp}", "--method", "ema"], "--method ema needs --decay"),
        (["{mlp}", "{mlp}", "--method", "ties", "--base", "{mlp}", "--density", "0"], "--density"),
        (["{mlp}", "{mlp}", "--method", "task-arithmetic"], "--base"),
        (["{mlp}", "missing.keras"], "no such file"),
    ],
)
def test_bad_input(tmp_path: Path, args: list[str], says: str) -> None:
    filled = [a.format(mlp=SAMPLES / "mlp.keras", cnn=SAMPLES / "cnn.keras") for a in args]
    res = run("merge", *filled, "-o", tmp_path / "o.keras")
    assert res.code == 2 and says in res.err, res.err
    assert len(res.err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_lambda_only_with_the_methods_that_use_it(tmp_path: Path) -> None:
    res = run(
        "merge",
        SAMPLES / "mlp.keras",
        SAMPLES / "mlp.keras",
        "--lambda",
        "0.5",
        "-o",
        tmp_path / "o.keras",
    )
    assert res.code == 2 and "--lambda does not go with --method mean" in res.err


def test_quantized_models_merge_only_with_the_same_codes(tmp_path: Path) -> None:
    """A natively quantized layer merges through its float scale; its codes are the
    first model's. Inputs whose codes differ are refused (the result would pair one
    model's codes with a merged scale), inputs with the same codes merge."""
    src = SAMPLES / "mlp_int8.keras"
    other = tmp_path / "clipped.keras"
    assert run("clip", src, "--abs-max", "0.05", "--requantize", "-o", other).code == 0
    res = run("merge", src, other, "-o", tmp_path / "m.keras")
    assert res.code == 2 and "codes differ" in res.err and "Traceback" not in res.err
    assert not (tmp_path / "m.keras").exists()
    assert run("merge", src, src, "-o", tmp_path / "same.keras").code == 0
