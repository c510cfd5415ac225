"""Bad input: one clear line on stderr, exit 2, no traceback; or a table where the input is valid."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import SAMPLES, run


def assert_clean_error(res, *words: str) -> None:
    assert res.code == 2, (res.code, res.out, res.err)
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert len(lines) == 1, res.err
    assert lines[0].startswith("weightcli: error:")
    assert "Traceback" not in res.err
    for w in words:
        assert w in lines[0], lines[0]


def test_missing_path(tmp_path: Path) -> None:
    assert_clean_error(run("inspect", tmp_path / "nope.h5"), "no such file")


def test_directory_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert_clean_error(run("inspect", tmp_path), "neither a SavedModel")


def test_text_file(tmp_path: Path) -> None:
    p = tmp_path / "model.h5"
    p.write_text("this is not a model\n")
    assert_clean_error(run("inspect", p), "unknown format")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "model.h5"
    p.write_bytes(b"")
    assert_clean_error(run("inspect", p), "empty")


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_h5(tmp_path: Path, keep: float) -> None:
    src = (SAMPLES / "mlp_keras3.h5").read_bytes()
    p = tmp_path / "trunc.h5"
    p.write_bytes(src[: int(len(src) * keep)])
    res = run("inspect", p)
    assert_clean_error(res)


def test_data_cut_off_is_a_clean_error(tmp_path: Path) -> None:
    p = tmp_path / "cut.h5"
    with h5py.File(p, "w") as f:
        f["small"] = np.ones(4, "f4")
        f["big"] = np.ones((512, 512), "f4")
        offset = f["big"].id.get_offset()
    data = p.read_bytes()
    assert offset + 512 * 512 * 4 <= len(data)
    p.write_bytes(data[: offset + 1000])
    assert_clean_error(run("inspect", p), "truncated")


def test_h5_without_tensors_is_an_empty_table(tmp_path: Path) -> None:
    p = tmp_path / "empty.h5"
    with h5py.File(p, "w") as f:
        f.create_group("nothing")
    res = run("inspect", p)
    assert res.code == 0 and "0 tensors" in res.out
    doc = run("inspect", p, "--json").json()
    assert doc["tensors"] == [] and doc["format"] == "hdf5"


def test_generic_hdf5_is_still_useful(tmp_path: Path) -> None:
    p = tmp_path / "data.h5"
    with h5py.File(p, "w") as f:
        f["a/b"] = np.arange(6, dtype="float32").reshape(2, 3)
        f["labels"] = np.array([b"x", b"y"])
    doc = run("inspect", p, "--json").json()
    assert [t["name"] for t in doc["tensors"]] == ["a/b"]
    assert doc["tensors"][0]["stats"]["max"] == 5.0


def test_zip_that_is_not_a_keras_archive(tmp_path: Path) -> None:
    p = tmp_path / "model.keras"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("readme.txt", "hi")
    assert_clean_error(run("inspect", p), "not a Keras archive")


def test_keras_named_file_that_is_really_hdf5(tmp_path: Path) -> None:
    p = tmp_path / "model.keras"
    shutil.copyfile(SAMPLES / "mlp_keras3.h5", p)
    doc = run("inspect", p, "--json").json()
    assert doc["format"] == "keras-h5" and len(doc["tensors"]) == 6


def test_external_link_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["w"] = np.ones(3, "float32")
    p = tmp_path / "linked.h5"
    with h5py.File(p, "w") as f:
        f["w"] = np.ones(3, "float32")
        f["ext"] = h5py.ExternalLink(str(other), "/w")
    assert_clean_error(run("inspect", p), "external link")


def test_external_dataset_refused(tmp_path: Path) -> None:
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.ones(4, "float32").tobytes())
    p = tmp_path / "extds.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("w", shape=(4,), dtype="float32", external=[(str(raw), 0, 16)])
    assert_clean_error(run("inspect", p), "external dataset")


def test_shape_bomb_refused(tmp_path: Path) -> None:
    p = tmp_path / "bomb.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("w", shape=(1 << 20, 1 << 16), dtype="float32", chunks=(1, 1024))
    assert_clean_error(run("inspect", p), "shape bomb")


def test_damaged_keras_archive_member(tmp_path: Path) -> None:
    p = tmp_path / "model.keras"
    with zipfile.ZipFile(SAMPLES / "mlp.keras") as src, zipfile.ZipFile(p, "w") as dst:
        for m in src.infolist():
            data = src.read(m)
            if m.filename == "model.weights.h5":
                data = data[: len(data) // 3]
            dst.writestr(m, data)
    assert_clean_error(run("inspect", p))


def test_debug_shows_traceback(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from weightcli.cli import cli
    from weightcli.errors import InputError

    res = CliRunner().invoke(cli, ["--debug", "inspect", str(tmp_path / "nope.h5")])
    assert isinstance(res.exception, InputError)


def test_help_on_every_command() -> None:
    from weightcli.cli import cli

    res = run("--help")
    assert res.code == 0
    ctx = cli.make_context("weightcli", ["--help"], resilient_parsing=True)
    names = cli.list_commands(ctx)
    assert set(names) == {
        "inspect",
        "report",
        "scale",
        "clip",
        "quantize",
        "apply",
        "diff",
        "verify",
        "transplant",
        "merge",
        "set",
        "dump",
        "freeze",
        "reinit",
        "export",
        "prune",
        "cluster",
        "strip",
        "lora",
        "migrate",
    }
    for name in names:
        cmd = cli.get_command(ctx, name)
        assert cmd is not None and name in res.out
        r = run(name, "--help")
        assert r.code == 0, name
        assert cmd.help and "Example" in r.out, f"{name} --help should teach with examples"
        for sub in getattr(cmd, "commands", {}):  # a group's commands too (lora merge)
            r = run(name, sub, "--help")
            assert r.code == 0 and "Example" in r.out, f"{name} {sub} --help"
