"""Hostile input, round two: special files, arrays whose headers lie, outputs that are
inputs, modes kept in place, a custom-objects file that calls sys.exit. Each refusal is
one line and exit 2, quickly (a FIFO never blocks), with the input untouched."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import SAMPLES, run

MLP = SAMPLES / "mlp.keras"


def weightcli(*args: object) -> subprocess.CompletedProcess[str]:
    """The real entry point (a FIFO that blocked would hit the timeout)."""
    return subprocess.run(
        [sys.executable, "-m", "weightcli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_fifo_never_blocks(tmp_path: Path) -> None:
    fifo = tmp_path / "values.npy"
    os.mkfifo(fifo)
    res = weightcli("set", MLP, f"dense_1/bias={fifo}", "-o", tmp_path / "o.keras")
    assert res.returncode == 2 and one_line(res.stderr) and "not a regular file" in res.stderr
    res = weightcli("set", MLP, "--from", fifo, "-o", tmp_path / "o.keras")
    assert res.returncode == 2 and one_line(res.stderr)
    res = weightcli("verify", MLP, "--input", fifo)
    assert res.returncode == 2 and one_line(res.stderr)


def test_a_fifo_inside_a_model_folder_never_blocks(tmp_path: Path) -> None:
    model = shutil.copytree(SAMPLES / "mlp_export", tmp_path / "sm")
    os.mkfifo(model / "variables" / "pipe")
    for args in (
        ["scale", model, "0.5", "-o", tmp_path / "o"],
        ["merge", model, SAMPLES / "mlp_export", "-o", tmp_path / "m"],
    ):
        res = weightcli(*args)
        assert res.returncode == 2, res.stderr
        assert one_line(res.stderr) and "pipe" in res.stderr


def _npy_claiming(path: Path, shape: tuple[int, ...]) -> Path:
    """A .npy whose header claims ``shape`` of float32 but holds 16 bytes of data."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(bytes(16))
    return path


def test_an_array_header_that_lies_is_refused_before_reading(tmp_path: Path) -> None:
    huge = _npy_claiming(tmp_path / "huge.npy", (1 << 20, 1 << 20))  # claims 4 TiB
    res = run("set", MLP, f"dense_1/bias={huge}", "-o", tmp_path / "o.keras")
    assert res.code == 2 and "claims shape" in res.err
    npz = tmp_path / "huge.npz"
    with zipfile.ZipFile(npz, "w") as z:
        z.write(huge, "dense_1/bias.npy")
    res = run("set", MLP, "--from", npz, "-o", tmp_path / "o.keras")
    assert res.code == 2 and one_line(res.err), res.err
    assert not (tmp_path / "o.keras").exists()


def test_an_object_array_is_refused(tmp_path: Path) -> None:
    npz = tmp_path / "objects.npz"
    np.savez(npz, **{"dense_1/bias": np.array([object(), 1], dtype=object)})
    res = run("set", MLP, "--from", npz, "-o", tmp_path / "o.keras")
    assert res.code == 2 and "pickle" in res.err and one_line(res.err)


def test_set_from_an_ordinary_npz_still_works(tmp_path: Path) -> None:
    shape = next(
        t["shape"]
        for t in run("inspect", MLP, "--json").json()["tensors"]
        if t["name"] == "dense_1/bias"
    )
    value = np.arange(int(np.prod(shape)), dtype="float32").reshape(shape)
    npz = tmp_path / "v.npz"
    np.savez_compressed(npz, **{"dense_1/bias": value})
    res = run("set", MLP, "--from", npz, "-o", tmp_path / "o.keras")
    assert res.code == 0, res.err
    got = run("dump", tmp_path / "o.keras", "-o", tmp_path / "d.npz", "-s", "dense_1/bias")
    assert got.code == 0
    assert np.array_equal(np.load(tmp_path / "d.npz")["dense_1/bias"], value)


def test_merge_never_writes_over_an_input(tmp_path: Path) -> None:
    a = shutil.copyfile(SAMPLES / "mlp_keras3.h5", tmp_path / "a.h5")
    b = shutil.copyfile(SAMPLES / "mlp_keras3.h5", tmp_path / "b.h5")
    before = b.read_bytes()
    res = run("merge", a, b, "-o", b, "--force")
    assert res.code == 2 and "is an input" in res.err
    assert b.read_bytes() == before
    res = run("transplant", a, b, "-o", a, "--force")
    assert res.code == 2 and "is an input" in res.err


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_in_place_keeps_the_mode(tmp_path: Path, mode: int) -> None:
    path = shutil.copyfile(SAMPLES / "mlp_keras3.h5", tmp_path / "m.h5")
    os.chmod(path, mode)
    before = path.read_bytes()
    res = run("scale", path, "0.5", "--in-place")
    assert res.code == 0, res.err
    assert path.read_bytes() != before  # the premise: it was rewritten
    assert stat.S_IMODE(os.stat(path).st_mode) == mode


def test_in_place_refuses_a_read_only_file_without_force(tmp_path: Path) -> None:
    path = shutil.copyfile(SAMPLES / "mlp_keras3.h5", tmp_path / "m.h5")
    os.chmod(path, 0o444)
    before = path.read_bytes()
    res = run("scale", path, "0.5", "--in-place")
    assert res.code == 2 and "read-only" in res.err and "--force" in res.err
    assert path.read_bytes() == before
    res = run("scale", path, "0.5", "--in-place", "--force")
    assert res.code == 0, res.err
    assert path.read_bytes() != before
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444


def test_a_custom_objects_file_that_exits_is_an_error(tmp_path: Path) -> None:
    code = tmp_path / "custom.py"
    code.write_text("import sys\nsys.exit(0)\n")
    res = weightcli("verify", MLP, "--custom-objects", code)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "SystemExit" in res.stderr and one_line(res.stderr)


def test_whole_file_reads_are_capped_before_reading(tmp_path: Path) -> None:
    """A checkpoint state file, a history record and a recipe far over their size:
    refused with one line before they are read whole."""
    from weightcli.stores import capped

    ckpt = shutil.copytree(SAMPLES / "mlp_ckpt", tmp_path / "ckpt")
    (ckpt / "checkpoint").write_text('model_checkpoint_path: "ckpt"\n' + "#" * (2 << 20))
    res = run("inspect", ckpt)
    assert res.code == 2 and "over the limit" in res.err and one_line(res.err)

    ckpt2 = shutil.copytree(SAMPLES / "mlp_ckpt", tmp_path / "ckpt2")
    history = ckpt2 / "ckpt.weightcli_history.json"
    with open(history, "wb") as f:
        f.truncate(capped.HISTORY_BYTES + 1)
    assert run("inspect", ckpt2 / "ckpt", "--no-stats").code == 2

    recipe = tmp_path / "r.toml"
    recipe.write_text("# " + "x" * (capped.RECIPE_BYTES + 10) + "\n")
    res = run("apply", recipe, SAMPLES / "mlp_keras3.h5", "-o", tmp_path / "o.h5")
    assert res.code == 2 and "over the limit" in res.err and one_line(res.err)


def test_a_capped_read_allocates_what_the_file_holds_and_sees_growth(tmp_path: Path) -> None:
    """A small file is read with a buffer of its own size (not the cap: a 1 GiB
    allocation for every saved_model.pb), and a file that grew after its size was taken
    is still read whole, or refused over the cap."""
    import os
    import tracemalloc

    from weightcli.errors import CorruptError
    from weightcli.stores import capped

    small = tmp_path / "small.pb"
    small.write_bytes(b"x" * 1000)
    tracemalloc.start()
    try:
        assert capped.read_bytes(small, capped.GRAPH_BYTES) == b"x" * 1000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak

    class Shrunk(type(small)):  # type: ignore[misc]
        def stat(self, *a, **k):  # the size it had before it grew
            st = os.stat(self)
            return os.stat_result((*st[:6], 10, *st[7:]))

    grown = Shrunk(small)
    assert capped.read_bytes(grown, 2000) == b"x" * 1000
    with pytest.raises(CorruptError, match="over the limit"):
        capped.read_bytes(grown, 500)


def test_a_sharded_output_whose_shard_name_is_taken_publishes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "o.weights.json"
    (tmp_path / "o_00002.weights.h5").write_bytes(b"someone else's")
    res = run("scale", SAMPLES / "mlp_sharded" / "mlp.weights.json", "0.5", "-o", out)
    assert res.code == 2 and "o_00002.weights.h5" in res.err and "already exists" in res.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o_00002.weights.h5"]
    assert (tmp_path / "o_00002.weights.h5").read_bytes() == b"someone else's"


def test_a_shard_that_is_a_full_model_h5_is_refused(tmp_path: Path) -> None:
    folder = shutil.copytree(SAMPLES / "mlp_sharded", tmp_path / "sh")
    first = sorted(folder.glob("*.weights.h5"))[0]
    shutil.copyfile(SAMPLES / "mlp_keras3.h5", first)
    res = run("inspect", folder / "mlp.weights.json")
    assert res.code == 2 and "not a shard" in res.err and one_line(res.err)


def test_a_second_in_place_writer_is_refused(tmp_path: Path) -> None:
    """Two in-place writers of one file: the second is refused while the first holds
    it, and a writer whose input changed after it read it is refused too (no update is
    lost in silence)."""
    from weightcli.errors import OutputError
    from weightcli.stores import open_store
    from weightcli.stores.base import _write_lock

    path = shutil.copyfile(SAMPLES / "mlp_keras3.h5", tmp_path / "m.h5")
    with open(path, "r+b") as held:
        _write_lock(held.fileno())  # another writer, mid-write
        res = weightcli("scale", path, "0.5", "--in-place")
    assert res.returncode == 2 and "another weightcli" in res.stderr, res.stderr
    before = path.read_bytes()
    with open_store(path) as store:
        os.utime(path, ns=(1, 1))  # another writer finished meanwhile
        with pytest.raises(OutputError, match="changed while"):
            store.patch(path)
    assert path.read_bytes() == before
    assert weightcli("scale", path, "0.5", "--in-place").returncode == 0  # the premise


def test_links_out_of_a_model_are_refused_in_every_format(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    # A weights map's shard linking out of the map's folder.
    sh = shutil.copytree(SAMPLES / "mlp_sharded", tmp_path / "sh")
    first = sorted(sh.glob("*.weights.h5"))[0]
    shutil.move(first, outside / first.name)
    first.symlink_to(outside / first.name)
    res = run("inspect", sh / "mlp.weights.json")
    assert res.code == 2 and "out of the model folder" in res.err, res.err
    # A model folder whose weights, or whose assets, link out.
    for link, target in (("model.weights.h5", None), ("assets", "/etc")):
        folder = shutil.copytree(SAMPLES / "mlp_folder", tmp_path / f"f_{link}")
        if target is None:
            shutil.move(folder / link, outside / "w.h5")
            target = str(outside / "w.h5")
        (folder / link).symlink_to(target)
        res = run("scale", folder, "0.5", "-o", tmp_path / f"o_{link}")
        assert res.code == 2 and "out of the model folder" in res.err, res.err
        assert not (tmp_path / f"o_{link}").exists()
    # A link inside the model is fine: the premise.
    folder = shutil.copytree(SAMPLES / "mlp_folder", tmp_path / "inner")
    (folder / "alias.json").symlink_to("config.json")
    assert run("scale", folder, "0.5", "-o", tmp_path / "o_inner").code == 0


def test_a_checkpoint_state_file_naming_a_path_elsewhere(tmp_path: Path) -> None:
    """A state file written on another machine (an absolute path): the prefix of the same
    name in this folder is read; one naming a checkpoint elsewhere only is refused."""
    ckpt = shutil.copytree(SAMPLES / "mlp_ckpt", tmp_path / "ckpt")
    (ckpt / "checkpoint").write_text('model_checkpoint_path: "/home/someone/run/ckpt"\n')
    res = run("inspect", ckpt, "--no-stats")  # the header says which prefix it read
    assert res.code == 0, res.err
    assert "/home/someone/run/ckpt" in res.out and "read ckpt in this folder" in res.out
    note = run("inspect", ckpt, "--no-stats", "--json").json()["details"]["note"]
    assert "read ckpt in this folder" in note  # --json carries it too
    elsewhere = shutil.copytree(SAMPLES / "mlp_ckpt", tmp_path / "elsewhere")
    (ckpt / "checkpoint").write_text(f'model_checkpoint_path: "{elsewhere / "other"}"\n')
    shutil.move(elsewhere / "ckpt.index", elsewhere / "other.index")
    res = run("inspect", ckpt)
    assert res.code == 2 and "outside this folder" in res.err, res.err
