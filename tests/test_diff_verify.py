"""diff and verify: verdicts and exit codes on deliberately broken checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import SAMPLES, run
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_bad_input import assert_clean_error

MLP = SAMPLES / "mlp_keras3.h5"


def check(doc: dict, name: str) -> dict:
    return next(c for c in doc["checks"] if c["name"] == name)


# -- diff -------------------------------------------------------------------------------------


def test_identical_files_exit_zero() -> None:
    res = run("diff", MLP, MLP)
    assert res.code == 0 and "EQUAL" in res.out


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("mlp_keras3.h5", "mlp_export"),
        ("mlp_keras3.h5", "mlp.keras"),
        ("mlp.keras", "mlp_tfsave"),
        ("mlp.weights.h5", "mlp_ckpt/ckpt"),
        ("mlp_tfkeras.h5", "mlp_tfkeras_savedmodel"),
        ("mlp_tfkeras.h5", "mlp_tfkeras_weights.h5"),
        ("cnn_keras3.h5", "cnn.weights.h5"),
    ],
)
def test_formats_of_one_model_are_equal(a: str, b: str) -> None:
    res = run("diff", SAMPLES / a, SAMPLES / b, "--json")
    doc = res.json()
    assert res.code == 0, doc["verdict"]
    assert doc["equal"] and all(t["status"] == "identical" for t in doc["tensors"])
    assert len(doc["tensors"]) >= 6


def test_different_models_exit_one() -> None:
    res = run("diff", SAMPLES / "mlp_keras3.h5", SAMPLES / "mlp_tfkeras.h5")
    assert res.code == 1 and "DIFFERENT" in res.out


def test_quantized_within_and_outside_tolerance(tmp_path: Path) -> None:
    q = tmp_path / "q.keras"
    assert run("quantize", SAMPLES / "mlp.keras", "-o", q).code == 0
    doc = run("diff", q, SAMPLES / "mlp.keras", "--json").json()
    worst = max(t["max_abs"] for t in doc["tensors"])
    assert run("diff", q, SAMPLES / "mlp.keras", "--atol", str(worst * 1.01)).code == 0
    assert run("diff", q, SAMPLES / "mlp.keras", "--atol", str(worst * 0.5)).code == 1


def test_structure_reads_no_data(monkeypatch, tmp_path: Path) -> None:
    from weightcli.stores.hdf5 import H5Store

    def boom(*a, **k):
        raise AssertionError("read tensor data")

    monkeypatch.setattr(H5Store, "read", boom)
    res = run("diff", MLP, SAMPLES / "mlp.keras", "--structure", "--json")
    assert res.code == 0 and res.json()["structure"] is True


def renamed_copy(src: Path, dst: Path, old: str, new: str) -> None:
    """A legacy .h5 in which layer ``old`` is renamed ``new`` (group, layer_names, weight_names)."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        root = f.get("model_weights", f)
        root.move(old, new)
        g = root[new]
        g.move(old, new)

        def text(v: object) -> str:
            return v.decode() if isinstance(v, bytes) else str(v)

        g.attrs["weight_names"] = [
            text(w).replace(old, new).encode() for w in g.attrs["weight_names"]
        ]
        root.attrs["layer_names"] = [
            text(n).replace(old, new).encode() for n in root.attrs["layer_names"]
        ]


def test_map_renames(tmp_path: Path) -> None:
    src = SAMPLES / "mlp_tfkeras_weights.h5"
    renamed = tmp_path / "renamed.h5"
    renamed_copy(src, renamed, "dense_2", "hidden_2")
    doc = run("diff", renamed, src, "--json").json()
    assert doc["counts"] == {"identical": 4, "only in A": 2, "only in B": 2}
    assert run("diff", renamed, src, "--map", "hidden_*=dense_*").code == 0
    assert run("diff", renamed, src, "--map", "hidden_2/=dense_2/").code == 0
    assert_clean_error(run("diff", renamed, src, "--map", "nonsense"), "OLD=NEW")


def test_nan_handling(tmp_path: Path) -> None:
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    x = np.array([1.0, np.nan, np.inf], "float32")
    for p in (a, b):
        with h5py.File(p, "w") as f:
            f["w"] = x
    assert run("diff", a, b).code == 1  # NaN equals nothing, as in numpy
    assert run("diff", a, b, "--nan-equal").code == 0


def _h5(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f[k] = v
    return path


@settings(max_examples=25, deadline=None)
# Found by hypothesis: a slice holding NaN must be judged in float32 too, like numpy.
@example([1e-05, 0.0, 0.0], [-0.009999999999999998] + [0.0] * 19, 0.01, 0.0, True)
@given(
    st.lists(st.floats(-1000, 1000), min_size=1, max_size=20),
    st.lists(st.floats(-0.01, 0.01), min_size=20, max_size=20),
    st.sampled_from([0.0, 1e-6, 1e-3, 1e-2]),
    st.sampled_from([0.0, 1e-6, 1e-3]),
    st.booleans(),
)
def test_verdicts_agree_with_numpy_allclose(values, noise, atol, rtol, nan_equal) -> None:
    import tempfile

    b = np.array(values, "float32")
    a = (b + np.array(noise[: len(b)], "float32")).astype("float32")
    if len(b) > 2:
        a[1] = b[1] = np.nan
    with tempfile.TemporaryDirectory() as d:
        pa = _h5(Path(d) / "a.h5", {"t": a})
        pb = _h5(Path(d) / "b.h5", {"t": b})
        args = ["diff", pa, pb, "--atol", atol, "--rtol", rtol, "--json"] + (
            ["--nan-equal"] if nan_equal else []
        )
        res = run(*args)
    # The oracle: numpy on the same float32 tensors (it computes in float32, as weightcli does).
    want = bool(np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=nan_equal))
    assert res.json()["equal"] is want and res.code == (0 if want else 1)
    close = np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=nan_equal)
    assert res.json()["tensors"][0]["beyond"] == int((~close).sum())


# -- verify -----------------------------------------------------------------------------------


def test_verify_sound_model_passes() -> None:
    res = run("verify", SAMPLES / "cnn.keras", "--json")
    doc = res.json()
    assert res.code == 0, doc
    assert check(doc, "loads")["status"] == "PASS"
    assert check(doc, "forward pass")["status"] == "PASS"


def test_verify_planted_nan_fails() -> None:
    res = run("verify", SAMPLES / "mlp_nan.h5", "--no-load", "--json")
    assert res.code == 1
    c = check(res.json(), "finite")
    assert c["status"] == "FAIL" and c["data"]["tensors"] == ["dense_2/kernel"]
    res = run("verify", SAMPLES / "mlp_nan.h5", "--json")
    assert check(res.json(), "forward pass")["status"] == "FAIL"


def test_reinitialised_layer_flagged_by_name(tmp_path: Path) -> None:
    p = tmp_path / "reinit.h5"
    shutil.copyfile(MLP, p)
    with h5py.File(p, "r+") as f:
        ds = f["model_weights/dense_2/mlp/dense_2/kernel"]
        w = ds[()]
        ds[...] = np.random.default_rng(5).normal(0, w.std(), w.shape).astype("float32")
    res = run("verify", p, "--reference", MLP, "--no-load", "--json")
    assert res.code == 1
    c = check(res.json(), "not re-initialised")
    assert c["status"] == "FAIL" and c["data"]["tensors"] == ["dense_2/kernel"]
    # A fine-tune-sized change is not flagged.
    q = tmp_path / "q.h5"
    assert run("quantize", MLP, "--bits", "4", "-o", q).code == 0
    assert (
        check(
            run("verify", q, "--reference", MLP, "--no-load", "--json").json(), "not re-initialised"
        )["status"]
        == "PASS"
    )


def test_renamed_layer_in_weights_only_file(tmp_path: Path) -> None:
    p = tmp_path / "renamed.h5"
    renamed_copy(SAMPLES / "mlp_tfkeras_weights.h5", p, "dense_2", "dense_9")
    # Keras loads legacy weights by position: it loads this file, so the renamed layer is
    # a warning (named), not a failure.
    res = run("verify", p, "--architecture", SAMPLES / "mlp_tfkeras.h5", "--json")
    assert res.code == 0, res.out
    c = check(res.json(), "loads")
    assert c["status"] == "WARN" and "dense_2" in c["detail"] and "dense_9" in c["detail"]
    # Weights that Keras cannot load into the architecture: a failure, with the reasons.
    bad = run(
        "verify", SAMPLES / "cnn.weights.h5", "--architecture", SAMPLES / "mlp.keras", "--json"
    )
    assert bad.code == 1
    c = check(bad.json(), "loads")
    assert c["status"] == "FAIL" and "Keras could not load" in c["detail"]
    ok = run(
        "verify",
        SAMPLES / "mlp_tfkeras_weights.h5",
        "--architecture",
        SAMPLES / "mlp_tfkeras.h5",
        "--json",
    )
    assert ok.code == 0 and check(ok.json(), "forward pass")["status"] == "PASS"
    k3 = run(
        "verify", SAMPLES / "mlp.weights.h5", "--architecture", SAMPLES / "mlp.keras", "--json"
    )
    assert k3.code == 0, k3.out


def test_weights_only_without_architecture_skips_load() -> None:
    res = run("verify", SAMPLES / "mlp.weights.h5", "--json")
    assert res.code == 0 and check(res.json(), "loads")["status"] == "SKIP"


def test_truncated_file_is_a_failed_check_for_verify_and_exit_2_elsewhere(tmp_path: Path) -> None:
    """Damage that verify finds is a failed check (exit 1, "readable" named) in every
    format; other commands refuse the damaged input (exit 2)."""
    p = tmp_path / "t.h5"
    p.write_bytes(MLP.read_bytes()[:5000])
    res = run("verify", p, "--json")
    assert res.code == 1 and check(res.json(), "readable")["status"] == "FAIL"
    assert_clean_error(run("inspect", p))
    assert run("verify", tmp_path / "missing.h5").code == 2  # nothing to verify: an error


def test_flipped_byte_in_savedmodel_shard(tmp_copy) -> None:
    p = tmp_copy(SAMPLES / "mlp_export")
    shard = p / "variables" / "variables.data-00000-of-00001"
    data = bytearray(shard.read_bytes())
    data[200] ^= 0x01
    shard.write_bytes(bytes(data))
    res = run("verify", p, "--no-load", "--json")
    assert res.code == 1
    c = check(res.json(), "readable")
    assert c["status"] == "FAIL" and "checksum mismatch" in c["detail"]
    assert any("/" in t for t in c["data"]["tensors"])  # names the tensor


def test_export_copies_disagreeing_fail(tmp_copy) -> None:
    # Rewrite one copy through weightcli's own patcher-free route: TensorFlow's SaveV2 oracle.
    import tensorflow as tf

    p = tmp_copy(SAMPLES / "mlp_export")
    prefix = str(p / "variables" / "variables")
    r = tf.train.load_checkpoint(prefix)
    keys = sorted(r.get_variable_to_shape_map())
    tensors = [r.get_tensor(k) for k in keys]
    i = keys.index("_all_variables/0/.ATTRIBUTES/VARIABLE_VALUE")
    tensors[i] = tensors[i] * 2
    tf.raw_ops.SaveV2(
        prefix=prefix, tensor_names=keys, shape_and_slices=[""] * len(keys), tensors=tensors
    )
    res = run("verify", p, "--no-load", "--json")
    assert res.code == 1
    assert check(res.json(), "copies agree")["status"] == "FAIL"
    assert (
        check(run("verify", SAMPLES / "mlp_export", "--no-load", "--json").json(), "copies agree")[
            "status"
        ]
        == "PASS"
    )


def test_quantized_copy_within_and_outside_output_tolerance(tmp_path: Path) -> None:
    q = tmp_path / "q.keras"
    assert run("quantize", SAMPLES / "cnn.keras", "-o", q).code == 0
    good = run("verify", q, "--reference", SAMPLES / "cnn.keras", "--atol", "0.05", "--json")
    assert good.code == 0, good.out
    c = check(good.json(), "outputs match reference")
    assert c["status"] == "PASS" and c["data"]["top1_agreement"] is not None
    bad = run("verify", q, "--reference", SAMPLES / "cnn.keras", "--atol", "1e-7", "--rtol", "0")
    assert bad.code == 1
    cos = run(
        "verify",
        q,
        "--reference",
        SAMPLES / "cnn.keras",
        "--atol",
        "1",
        "--min-cosine",
        "0.9999999999",
    )
    assert cos.code == 1


def test_savedmodel_against_its_h5(tmp_path: Path) -> None:
    res = run("verify", SAMPLES / "mlp_export", "--reference", MLP, "--json")
    assert res.code == 0  # a SavedModel's graph is not loaded unless trusted
    assert check(res.json(), "loads")["status"] == "SKIP"
    res = run("verify", SAMPLES / "mlp_export", "--reference", MLP, "--json", "--trust-code")
    doc = res.json()
    assert res.code == 0, doc
    assert check(doc, "loads")["detail"].startswith("loaded with tf.saved_model.load")
    assert check(doc, "outputs match reference")["status"] == "PASS"


def test_verify_input_file(tmp_path: Path) -> None:
    res = run("verify", SAMPLES / "mlp.keras", "--input", SAMPLES / "mlp_calibration.npy", "--json")
    assert res.code == 0 and "(64, 3)" in check(res.json(), "forward pass")["detail"]
    bad = tmp_path / "x.npy"
    np.save(bad, np.zeros((2, 7), "float32"))
    assert run("verify", SAMPLES / "mlp.keras", "--input", bad).code == 1


def test_verify_no_load_never_imports_tensorflow() -> None:
    import subprocess
    import sys

    from helpers import ROOT

    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom weightcli.cli import cli\n"
        f"r = CliRunner().invoke(cli, ['verify', {str(SAMPLES / 'mlp_export')!r}, '--no-load', '--reference', {str(MLP)!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        f"r = CliRunner().invoke(cli, ['diff', {str(SAMPLES / 'mlp_export')!r}, {str(MLP)!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_keras1_file_fails_to_load_with_a_clear_reason() -> None:
    from helpers import REAL

    if not REAL.is_dir():
        pytest.skip("needs ../shared/real_models")
    res = run(
        "verify", REAL / "dl4j_keras1_lstm_full_model" / "simple_lstm_tf_keras_1_model.h5", "--json"
    )
    assert res.code == 1
    c = check(res.json(), "loads")
    assert c["status"] == "FAIL" and "Keras 1.2.2" in c["detail"]
    assert check(res.json(), "readable")["status"] == "PASS"


def test_ignore_dtype_compares_values_across_dtypes(tmp_path: Path) -> None:
    """A float16 export within tolerance: DIFFERENT only for its dtype without the flag;
    with --ignore-dtype its values decide (against numpy), and the verdict says so."""
    half = tmp_path / "h.h5"
    assert run("quantize", MLP, "--dtype", "float16", "-o", half).code == 0
    assert run("diff", half, MLP, "--atol", "1e-3").code == 1
    res = run("diff", half, MLP, "--atol", "1e-3", "--ignore-dtype", "--json")
    doc = res.json()
    assert res.code == 0 and doc["ignore_dtype"] is True and "dtypes ignored" in doc["verdict"]
    import weightcli

    with weightcli.open(half) as h, weightcli.open(MLP) as m:
        worst = max(
            float(np.abs(h.array(t.name).astype(np.float64) - m.array(t.name)).max())
            for t in h.tensors()
            if not t.optimizer
        )
    assert 0 < worst <= 1e-3  # the premise: values do differ, within the tolerance
    assert run("diff", half, MLP, "--atol", str(worst / 10), "--ignore-dtype").code == 1


def test_diff_by_model_order_across_names(tmp_path: Path) -> None:
    """One model saved under other names: by name every tensor differs ("only in"), by
    model order the bytes are identical; the pairing checked against h5py."""
    import shutil

    import h5py

    src = SAMPLES / "mlp.weights.h5"
    a = shutil.copyfile(src, tmp_path / "renamed.weights.h5")
    with h5py.File(a, "r+") as f:
        for i, group in enumerate(
            ("layers/dense/vars", "layers/dense_1/vars", "layers/dense_2/vars")
        ):
            f[group].attrs["name"] = f"renamed_{i}"
    by_name = run("diff", a, src, "--json").json()
    assert by_name["equal"] is False  # the premise: the names differ
    res = run("diff", a, src, "--match-by", "order", "--json")
    assert res.code == 0, res.out
    assert res.json()["counts"] == {"identical": 6}
    with h5py.File(a) as x, h5py.File(src) as y:  # the oracle: the same bytes, in order
        for g in ("layers/dense/vars", "layers/dense_1/vars", "layers/dense_2/vars"):
            assert all(np.array_equal(x[g][k][()], y[g][k][()]) for k in ("0", "1"))
    assert run("diff", a, src, "--match-by", "order", "--map", "a=b").code == 2


def test_map_file_renames_as_map_does(tmp_path: Path) -> None:
    """--map-file: OLD=NEW rules a line (comments, blank lines), the same as --map; a bad
    line is one error naming its line."""
    import shutil

    import h5py

    src = SAMPLES / "mlp.weights.h5"
    a = shutil.copyfile(src, tmp_path / "renamed.weights.h5")
    with h5py.File(a, "r+") as f:
        for i, g in enumerate(("layers/dense/vars", "layers/dense_1/vars", "layers/dense_2/vars")):
            f[g].attrs["name"] = f"renamed_{i}"
    rules = tmp_path / "map.txt"
    rules.write_text("# renamed layers\nrenamed_0=dense_1\n\nrenamed_1=dense_2\nrenamed_2=logits\n")
    by_map = run(
        "diff",
        a,
        src,
        "--map",
        "renamed_0=dense_1",
        "--map",
        "renamed_1=dense_2",
        "--map",
        "renamed_2=logits",
        "--json",
    ).json()
    by_file = run("diff", a, src, "--map-file", rules, "--json")
    assert by_file.code == 0 and by_file.json()["counts"] == by_map["counts"] == {"identical": 6}
    rules.write_text("renamed_0=dense_1\nno equals sign\n")
    res = run("diff", a, src, "--map-file", rules)
    assert res.code == 2 and "line 2" in res.err
