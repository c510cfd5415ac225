"""Bad transform requests: one clear line on stderr, exit 2, nothing written, input untouched."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from helpers import SAMPLES, run
from test_bad_input import assert_clean_error

SRC = SAMPLES / "mlp_keras3.h5"


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "args",
    [
        ["scale", SRC, "abc"],
        ["scale", SRC, "nan"],
        ["scale", SRC, "inf"],
        ["scale", SRC, "-inf"],
        ["scale", SRC],
        ["scale", SRC, "--by-type", "Dense=nan"],
        ["scale", SRC, "--by-type", "Dense"],
        ["clip", SRC, "--min", "1", "--max", "-1"],
        ["clip", SRC, "--min", "nan"],
        ["clip", SRC],
        ["clip", SRC, "--abs-max", "1", "--percentile", "99"],
        ["clip", SRC, "--percentile", "0"],
        ["clip", SRC, "--percentile", "101"],
        ["clip", SRC, "--sigma", "-1"],
        ["quantize", SRC, "--bits", "0"],
        ["quantize", SRC, "--bits", "1"],
        ["quantize", SRC, "--bits", "33"],
        ["quantize", SRC, "--axis", "5"],
        ["quantize", SRC, "--dtype", "bfloat16"],
        ["scale", SAMPLES / "mlp_tfkeras_weights.h5", "2", "--layer-type", "Dense"],
        ["scale", SRC, "2", "-s", "no_such_layer*"],
        ["quantize", SRC, "-s", "*/bias", "--kind", "kernel"],
    ],
    ids=lambda a: " ".join(str(x) for x in a[2:]) if isinstance(a, list) else str(a),
)
def test_bad_requests(args: list, tmp_path: Path) -> None:
    src = Path(args[1])
    before = sha(src)
    out = tmp_path / "out.h5"
    assert_clean_error(run(*args, "-o", out))
    assert not out.exists() and os.listdir(tmp_path) == []
    assert sha(src) == before


def test_no_match_lists_names(tmp_path: Path) -> None:
    res = run("scale", SRC, "2", "-s", "nope", "-o", tmp_path / "o.h5")
    assert_clean_error(res, "matches no tensor", "dense_1/kernel")


def test_missing_output_folder(tmp_path: Path) -> None:
    assert_clean_error(
        run("scale", SRC, "2", "-o", tmp_path / "no" / "such" / "o.h5"), "does not exist"
    )


def test_existing_output_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "o.h5"
    out.write_bytes(b"precious")
    assert_clean_error(run("scale", SRC, "2", "-o", out), "already exists", "--force")
    assert out.read_bytes() == b"precious"
    assert run("scale", SRC, "2", "-o", out, "--force").code == 0
    assert out.read_bytes() != b"precious"


def test_output_equal_to_input_needs_in_place(tmp_copy) -> None:
    p = tmp_copy(SRC)
    before = sha(p)
    assert_clean_error(run("scale", p, "2", "-o", p), "--in-place")
    assert sha(p) == before


def test_read_only_output_folder(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        folder = Path("/proc")  # root ignores permission bits; /proc refuses new files even to root
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    assert_clean_error(run("scale", SRC, "2", "-o", folder / "o.h5"))


def test_missing_input(tmp_path: Path) -> None:
    assert_clean_error(
        run("scale", tmp_path / "none.h5", "2", "-o", tmp_path / "o.h5"), "no such file"
    )


def test_bad_recipes(tmp_path: Path) -> None:
    cases = {
        "notoml.toml": "this is = = not toml",
        "empty.toml": "",
        "unknown.toml": '[[step]]\ncommand = "rotate"\n',
        "badkey.toml": '[[step]]\ncommand = "scale"\nfactor = 2\nfactr = 3\n',
        "badnum.toml": '[[step]]\ncommand = "scale"\nfactor = "two"\n',
        "badclip.toml": '[[step]]\ncommand = "clip"\nmin = 1\nmax = 0\n',
        "notatable.toml": "step = [1, 2]\n",
    }
    for name, text in cases.items():
        r = tmp_path / name
        r.write_text(text)
        out = tmp_path / "o.h5"
        assert_clean_error(run("apply", r, SRC, "-o", out))
        assert not out.exists(), name
    assert_clean_error(
        run("apply", tmp_path / "missing.toml", SRC, "-o", tmp_path / "o.h5"), "not found"
    )


def test_full_disk_while_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write failing midway (here: no space left) is one clean line; nothing is left behind."""
    import errno

    import weightcli.stores.hdf5 as hdf5

    calls = []

    def pwrite(fd: int, data: object, offset: int) -> int:
        calls.append(offset)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    real = os.pwrite
    monkeypatch.setattr(hdf5.os, "pwrite", pwrite)
    src = SAMPLES / "cnn_keras3.h5"
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "out.h5"
    assert_clean_error(run("scale", src, "2", "-o", out), "No space left")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before


def test_messages_say_what_to_write_instead(tmp_path: Path) -> None:
    """A negative FACTOR, a folder of models, inputs that disagree: each message says
    what to write (or which file holds what)."""
    import shutil

    from helpers import SAMPLES

    res = run("scale", SAMPLES / "mlp.keras", "-1", "-o", tmp_path / "n.keras")
    assert res.code == 2 and "--factor -1" in res.err
    assert (
        run("scale", SAMPLES / "mlp.keras", "--factor", "-1", "-o", tmp_path / "n.keras").code == 0
    )
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("mlp.keras", "cnn.keras"):
        shutil.copyfile(SAMPLES / name, folder / name)
    res = run("inspect", folder)
    assert res.code == 2 and "give -r" in res.err
    res = run("merge", SAMPLES / "cnn.keras", SAMPLES / "mlp.keras", "-o", tmp_path / "m.keras")
    assert res.code == 2 and "in cnn.keras, not in mlp.keras" in res.err


def test_hints_say_the_reason_that_applies(tmp_path: Path) -> None:
    """A selection that matches tensors no rule gives a factor says so (not a hint about
    1-D tensors); layer hints list layers, not optimizer slots; a transplant's nearest
    names come with their shapes."""
    from helpers import SAMPLES

    res = run(
        "scale",
        SAMPLES / "cnn.keras",
        "--by-type",
        "Conv2D=2",
        "-s",
        "logits",
        "-o",
        tmp_path / "a.keras",
    )
    assert res.code == 2 and "rule names their layers" in res.err and "1-D" not in res.err
    res = run("quantize", SAMPLES / "mlp.keras", "-s", "*/bias", "-o", tmp_path / "b.keras")
    assert res.code == 0  # named: biases are quantized
    res = run("scale", SAMPLES / "mlp.keras", "--by-layer", "nothing=2", "-o", tmp_path / "c.keras")
    assert res.code == 2 and "optimizer" not in res.err and "dense_1" in res.err
    res = run(
        "transplant", SAMPLES / "cnn.keras", SAMPLES / "mlp.keras", "-o", tmp_path / "d.keras"
    )
    assert res.code == 2 and "(20, 32) ~ conv/kernel (3, 3, 3, 8)" in res.err
