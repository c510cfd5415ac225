"""inspect against an independent walk of the file with h5py and numpy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import H5_SAMPLES, REAL, REAL_H5, ROOT, SAMPLES, extract_weights, run

ALL_H5 = H5_SAMPLES + REAL_H5


def numeric_datasets(path: Path) -> dict[str, h5py.Dataset]:
    out: dict[str, object] = {}
    f = h5py.File(path, "r")

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "fiub":
            out["/" + name] = obj

    f.visititems(visit)
    return out  # type: ignore[return-value]


def oracle_stats(a: np.ndarray) -> dict[str, float]:
    x = a.astype(np.float64).ravel()
    finite = x[np.isfinite(x)]
    return {
        "min": finite.min(),
        "max": finite.max(),
        "mean": finite.mean(),
        "std": finite.std(),
        "abs_max": np.abs(finite).max(),
        "zeros": int((finite == 0).sum()),
        "nan": int(np.isnan(x).sum()),
        "inf": int(np.isinf(x).sum()),
    }


def test_real_models_present_in_ci() -> None:
    # CI always has ../shared; a run without it would silently test less.
    if not REAL.is_dir():
        pytest.skip("../shared/real_models not beside the checkout")
    assert len(REAL_H5) >= 6


@pytest.mark.parametrize("path", ALL_H5, ids=lambda p: p.name)
def test_inspect_matches_h5py(path: Path, tmp_path: Path) -> None:
    res = run("inspect", path, "--all", "--json")
    assert res.code == 0, res.err
    doc = res.json()
    assert doc["path"] == str(path)
    h5file = extract_weights(path, tmp_path)
    expected = numeric_datasets(h5file)
    got = {t["path"]: t for t in doc["tensors"]}
    # Every numeric dataset of the file is listed exactly once, and nothing else.
    assert set(got) == set(expected)
    names = [t["name"] for t in doc["tensors"]]
    assert len(names) == len(set(names)), "canonical names must be unique"
    for p, ds in expected.items():
        t = got[p]
        assert tuple(t["shape"]) == ds.shape
        assert t["dtype"] == ds.dtype.name
        assert t["bytes"] == ds.size * ds.dtype.itemsize
        data = ds[()]
        if data.size == 0:
            continue
        want = oracle_stats(np.asarray(data))
        for key, value in want.items():
            if key in ("mean", "std"):
                # Documented precision: about 1e-6 relative (float32 sums per slice).
                scale = float(np.abs(data.astype(np.float64)).max()) or 1.0
                assert t["stats"][key] == pytest.approx(value, rel=1e-5, abs=1e-6 * scale), (p, key)
            else:
                assert t["stats"][key] == value, (p, key)  # exact: min, max, counts


def test_no_stats_reads_no_data_and_has_no_stats_key() -> None:
    doc = run("inspect", SAMPLES / "cnn.keras", "--no-stats", "--json").json()
    assert doc["tensors"] and all("stats" not in t for t in doc["tensors"])


def test_canonical_names_agree_across_formats() -> None:
    def names(p: Path) -> dict[str, tuple]:
        doc = run("inspect", p, "--no-stats", "--json").json()
        return {t["name"]: (tuple(t["shape"]), t["dtype"], t["kind"]) for t in doc["tensors"]}

    for model in ("mlp", "cnn"):
        files = [
            f"{model}_keras3.h5",
            f"{model}.keras",
            f"{model}.weights.h5",
            f"{model}_tfkeras.h5",
            f"{model}_tfkeras_weights.h5",
        ]
        first = names(SAMPLES / files[0])
        assert "logits/kernel" in first
        for f in files[1:]:
            assert names(SAMPLES / f) == first, f


def test_layer_classes_from_config() -> None:
    doc = run("inspect", SAMPLES / "cnn.keras", "--no-stats", "--json").json()
    classes = {t["name"]: t["layer_class"] for t in doc["tensors"]}
    assert classes["conv/kernel"] == "Conv2D"
    assert classes["bn/moving_variance"] == "BatchNormalization"
    kinds = {t["name"]: t["kind"] for t in doc["tensors"]}
    assert kinds["bn/moving_mean"] == "moving_mean"


def test_optimizer_state_hidden_by_default() -> None:
    default = run("inspect", SAMPLES / "mlp_tfkeras.h5", "--no-stats", "--json").json()
    everything = run("inspect", SAMPLES / "mlp_tfkeras.h5", "--no-stats", "--all", "--json").json()
    assert not any(t["optimizer"] for t in default["tensors"])
    assert any(t["optimizer"] for t in everything["tensors"])


def test_table_output_and_layers() -> None:
    res = run("inspect", SAMPLES / "cnn_keras3.h5")
    assert res.code == 0
    assert "conv/kernel" in res.out and "Conv2D" in res.out and "Keras 3" in res.out
    res = run("inspect", SAMPLES / "cnn_keras3.h5", "--layers")
    assert "BatchNormalization" in res.out


def test_fail_on_nonfinite() -> None:
    assert run("inspect", SAMPLES / "mlp_nan.h5").code == 0
    res = run("inspect", SAMPLES / "mlp_nan.h5", "--fail-on-nonfinite")
    assert res.code == 1
    doc = run("inspect", SAMPLES / "mlp_nan.h5", "--json", "-s", "dense_2/kernel").json()
    (t,) = doc["tensors"]
    assert t["stats"]["nan"] == 1 and t["stats"]["inf"] == 2
    assert run("inspect", SAMPLES / "mlp_keras3.h5", "--fail-on-nonfinite").code == 0
    res = run("inspect", SAMPLES / "mlp_nan.h5", "--fail-on-nonfinite", "--no-stats")
    assert res.code == 2 and "--no-stats" in res.err


def test_select_and_exclude() -> None:
    doc = run("inspect", SAMPLES / "cnn.keras", "-s", "conv", "-x", "*/bias", "--json").json()
    assert [t["name"] for t in doc["tensors"]] == ["conv/kernel"]
    res = run("inspect", SAMPLES / "cnn.keras", "-s", "nothing*")
    assert res.code == 2 and "matches no tensor" in res.err and "conv/kernel" in res.err


def test_several_paths_one_json_line_each() -> None:
    res = run("inspect", SAMPLES / "mlp.keras", SAMPLES / "cnn.keras", "--json", "--no-stats")
    *docs, summary = res.lines()
    assert [d["format"] for d in docs] == ["keras-archive", "keras-archive"]
    assert summary == {"summary": summary["summary"]} and summary["summary"]["models"] == 2


def test_no_tensorflow_import_for_hdf5_family() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from weightcli.cli import cli\n"
        f"for p in {[str(p) for p in H5_SAMPLES]!r}:\n"
        "    r = CliRunner().invoke(cli, ['inspect', p])\n"
        "    assert r.exit_code == 0, r.output\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "assert 'keras' not in sys.modules, 'keras was imported'\n"
        "assert 'rich' not in sys.modules, 'rich was imported for output to a pipe'\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR",)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)


def test_installed_command_runs() -> None:
    exe = Path(sys.executable).parent / "weightcli"
    proc = subprocess.run(
        [str(exe), "inspect", str(SAMPLES / "mlp.keras"), "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert '"format": "keras-archive"' in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "weightcli", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "0.1.0" in proc.stdout


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["inspect", str(SAMPLES / "mlp_keras3.h5")], 0),
        (["diff", str(SAMPLES / "mlp_keras3.h5"), str(SAMPLES / "mlp_nan.h5")], 1),
        (["inspect", "no/such/model.h5"], 2),
        (["inspect", "--no-such-option"], 2),
    ],
)
def test_process_exit_keeps_code_and_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], code: int
) -> None:
    """The command ends its process without the interpreter's teardown: every byte of
    output must still reach a file, and the exit code must be the command's."""
    monkeypatch.setenv("COLUMNS", "150")
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.run([sys.executable, "-m", "weightcli", *args], stdout=o, stderr=e)
    assert proc.returncode == code
    in_process = run(*args)
    assert in_process.code == code
    assert out.read_text() == in_process.out
    if code == 2:
        assert err.read_text().startswith(("weightcli: error:", "Usage:"))


def test_names_are_printed_verbatim(tmp_path: Path) -> None:
    """Paths and tensor names are text, not rich markup or emoji codes."""
    p = tmp_path / "a:smile:[bold]b.h5"
    p.write_bytes((SAMPLES / "mlp_keras3.h5").read_bytes())
    res = run("inspect", p, "--no-stats")
    assert res.code == 0
    assert res.out.splitlines()[0].startswith(str(p))


def test_a_stale_weight_scope_is_named_by_its_layer(tmp_path: Path) -> None:
    """Keras 2.0 wrote a model built twice in one session with stale scopes
    (``dense_1/dense_1_1/kernel:0``): named by its layer as Keras names it
    (``dense_1/kernel``); the stored name selects it too."""
    import shutil

    import h5py

    path = shutil.copyfile(SAMPLES / "mlp_tfkeras.h5", tmp_path / "stale.h5")
    with h5py.File(path, "r+") as f:
        g = f["model_weights/dense_1"]
        g.move("dense_1", "dense_1_1")
        g.attrs["weight_names"] = [b"dense_1_1/kernel:0", b"dense_1_1/bias:0"]
    doc = run("inspect", path, "--no-stats", "--json").json()
    names = [t["name"] for t in doc["tensors"]]
    assert names == [
        t["name"]
        for t in run("inspect", SAMPLES / "mlp_tfkeras.h5", "--no-stats", "--json").json()[
            "tensors"
        ]
    ]
    kernel = next(t for t in doc["tensors"] if t["name"] == "dense_1/kernel")
    assert kernel["aliases"] == ["dense_1_1/kernel"]  # --json says how it is stored
    for glob in ("dense_1", "dense_1_1/kernel"):
        res = run(
            "scale",
            path,
            "2",
            "-s",
            glob,
            "-o",
            tmp_path / f"{glob.replace('/', '_')}.h5",
            "--json",
        )
        assert res.code == 0, res.err
        assert "dense_1/kernel" in [t["name"] for t in res.json()["tensors"]]
