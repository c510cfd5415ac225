"""Today's Keras 3 files: sharded weights (.weights.json), unzipped model folders, and a
SavedModel folder whose saved_model.pb went missing. Keras loading the outputs is the
oracle."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import SAMPLES, keras_quiet, run

import weightcli

SHARDED = SAMPLES / "mlp_sharded" / "mlp.weights.json"
FOLDER = SAMPLES / "mlp_folder"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _model_with(weights: Path):
    keras = keras_quiet()
    model = keras.models.load_model(SAMPLES / "mlp.keras", compile=False)
    model.load_weights(weights)
    return model


def test_sharded_weights_read_as_one_model() -> None:
    shards = json.loads(SHARDED.read_text())["weight_map"]
    assert len({s for v in shards.values() for s in v}) > 1  # premise: really sharded
    res = run("diff", SHARDED, SAMPLES / "mlp.keras", "--json")
    assert res.code == 0, res.out
    assert res.json()["counts"] == {"identical": 6}
    model = _model_with(SHARDED)
    with weightcli.open(SHARDED) as ckpt:
        for layer in model.layers:
            for w in layer.weights:
                name = f"{layer.name}/{w.path.rsplit('/', 1)[-1]}"
                np.testing.assert_array_equal(ckpt.array(name), np.asarray(w))


def test_sharded_transform_patches_only_changed_shards(tmp_path: Path) -> None:
    out = tmp_path / "half.weights.json"
    res = run("scale", SHARDED, "0.5", "-s", "logits", "-o", out, "--json")
    assert res.code == 0, res.err
    doc = json.loads(out.read_text())
    new_shards = sorted({s for v in doc["weight_map"].values() for s in v})
    assert all(s.startswith("half_") for s in new_shards)
    assert doc["weightcli_history"][-1]["changed"] == ["logits/kernel", "logits/bias"]
    # Shards without a logits tensor are byte copies of the source's.
    src_map = json.loads(SHARDED.read_text())["weight_map"]
    logits_groups = {g for g in src_map if g.startswith("/layers/") and "dense_2" in g}
    for group, shards in src_map.items():
        if group in logits_groups or group.startswith("/optimizer"):
            continue
        for old, new in zip(shards, doc["weight_map"][group], strict=True):
            if not any(old in src_map[g] for g in logits_groups):
                assert sha(SHARDED.parent / old) == sha(out.parent / new)
    before, after = _model_with(SHARDED), _model_with(out)
    for layer in before.layers:
        for w0, w1 in zip(layer.weights, after.get_layer(layer.name).weights, strict=True):
            want = np.asarray(w0) * (0.5 if layer.name == "logits" else 1.0)
            np.testing.assert_allclose(np.asarray(w1), want, rtol=1e-7)


def test_sharded_map_naming_bad_shards_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(SHARDED.parent, folder)
    doc = json.loads((folder / SHARDED.name).read_text())
    first_group = next(iter(doc["weight_map"]))
    missing = dict(doc, weight_map={**doc["weight_map"], first_group: ["gone.weights.h5"]})
    (folder / "missing.weights.json").write_text(json.dumps(missing))
    escape = dict(doc, weight_map={**doc["weight_map"], first_group: ["../x.weights.h5"]})
    (folder / "escape.weights.json").write_text(json.dumps(escape))
    for name, why in (("missing", "missing"), ("escape", "outside the map's folder")):
        res = run("inspect", folder / f"{name}.weights.json")
        assert res.code == 2 and why in res.err, res.err


def test_unzipped_model_folder(tmp_path: Path) -> None:
    assert run("diff", FOLDER, SAMPLES / "mlp.keras").code == 0
    out = tmp_path / "half"
    res = run("scale", FOLDER, "0.5", "-s", "dense_1", "-o", out)
    assert res.code == 0, res.err
    for name in ("config.json", "metadata.json"):
        assert sha(out / name) == sha(FOLDER / name)
    keras = keras_quiet()
    before = keras.models.load_model(FOLDER, compile=False)
    after = keras.models.load_model(out, compile=False)
    np.testing.assert_allclose(
        np.asarray(after.get_layer("dense_1").kernel),
        0.5 * np.asarray(before.get_layer("dense_1").kernel),
        rtol=1e-7,
    )
    np.testing.assert_array_equal(
        np.asarray(after.get_layer("logits").kernel), np.asarray(before.get_layer("logits").kernel)
    )


def test_savedmodel_folder_without_its_graph(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(SAMPLES / "mlp_export", folder)
    (folder / "saved_model.pb").rename(folder / "model_1.pb")
    res = run("inspect", folder, "--json", "--no-stats")
    assert res.code == 0, res.err
    assert res.json()["format"] == "tf-checkpoint"
    assert run("diff", folder, SAMPLES / "mlp_export").code == 0
    text = run("inspect", folder, "--no-stats").out
    assert "no saved_model.pb" in text
    ver = run("verify", folder, "--json").json()
    loads = next(c for c in ver["checks"] if c["name"] == "loads")
    assert loads["status"] == "SKIP" and "cannot load" in loads["detail"]


def test_recursive_search_finds_each_new_model_once() -> None:
    res = run("inspect", "-r", SAMPLES, "--no-stats", "--json")
    paths = [d["path"] for d in res.lines()[:-1]]
    assert paths.count(str(SHARDED)) == 1 and paths.count(str(FOLDER)) == 1
    assert len(paths) == len(set(paths))  # each model once
    assert not any("mlp_sharded/mlp_0000" in p for p in paths)
    assert not any(p.startswith(str(FOLDER) + "/") for p in paths)


# -- the archive patched in place ------------------------------------------------------------


def _h5_tensors(data: bytes) -> dict[str, np.ndarray]:
    import io

    import h5py

    out: dict[str, np.ndarray] = {}
    with h5py.File(io.BytesIO(data), "r") as f:
        f.visititems(lambda n, o: out.update({n: o[()]}) if isinstance(o, h5py.Dataset) else None)
    return out


@pytest.mark.parametrize(
    "args",
    [["scale", "0.5"], ["quantize", "--dtype", "float16"], ["clip", "--abs-max", "0.05"]],
)
def test_an_archive_is_patched_inside_the_new_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    """The weights member's bytes sit at a power of two (where HDF5 finds a superblock
    after a user block), patched there: written once. The result equals the route
    through a temporary .h5 tensor for tensor, keeps the members' order and every other
    member's bytes, passes zip's CRC check, and Keras loads and runs it."""
    import zipfile

    from helpers import load, mlp_input, predict

    from weightcli.stores import archive

    src = SAMPLES / "mlp.keras"
    fast, slow = tmp_path / "fast.keras", tmp_path / "slow.keras"
    res = run(args[0], src, *args[1:], "-o", fast, "--json")
    assert res.code == 0, res.err
    monkeypatch.setattr(archive, "_starts_hdf5", lambda store: False)
    assert run(args[0], src, *args[1:], "-o", slow).code == 0
    with zipfile.ZipFile(fast) as zf, zipfile.ZipFile(slow) as zs, zipfile.ZipFile(src) as z0:
        assert zf.testzip() is None and zs.testzip() is None
        at = archive.member_data_offset(fast, zf.getinfo(archive.WEIGHTS))
        assert at >= archive.MIN_DATA_AT and at & (at - 1) == 0  # the premise
        assert archive.member_data_offset(slow, zs.getinfo(archive.WEIGHTS)) < at
        assert zf.namelist() == z0.namelist() == zs.namelist()
        infos = zf.infolist()  # no gap between members (streaming readers walk them)
        for before, after in zip(infos, infos[1:], strict=False):
            end = archive.member_data_offset(fast, before) + before.compress_size
            assert after.header_offset == end
        others = [n for n in z0.namelist() if n != archive.WEIGHTS]
        for name in others:
            assert zf.read(name) == z0.read(name)
            assert zf.getinfo(name).date_time == z0.getinfo(name).date_time
        a, b = _h5_tensors(zf.read(archive.WEIGHTS)), _h5_tensors(zs.read(archive.WEIGHTS))
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert run("verify", "--no-load", fast).code == 0
    y, y0 = (
        predict(load(fast, "keras3-full"), mlp_input()),
        predict(load(slow, "keras3-full"), mlp_input()),
    )
    np.testing.assert_array_equal(y, y0)
    written = res.json()["bytes_written"]
    if args[0] == "quantize":  # retyped: every byte written, once
        assert written <= fast.stat().st_size
    else:  # the unchanged bytes copied in the kernel
        assert written < fast.stat().st_size


def test_members_that_outgrow_their_room_take_the_copy_route(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config rewritten longer than the room left before the weights: the patched
    weights are copied into a new archive instead; the same result, no temporary left."""
    import zipfile

    from helpers import load, mlp_input, predict

    from weightcli.stores import archive

    src = SAMPLES / "mlp.keras"
    want = tmp_path / "want.keras"
    assert run("scale", src, "0.5", "-o", want).code == 0
    calls = []

    def no_room(*args: object) -> None:
        calls.append(args)
        return None

    monkeypatch.setattr(archive, "_header_offset", no_room)
    out = tmp_path / "out" / "got.keras"
    out.parent.mkdir()
    res = run("scale", src, "0.5", "-o", out)
    assert res.code == 0, res.err
    assert calls  # the premise: the in-place route was tried
    assert sorted(p.name for p in out.parent.iterdir()) == ["got.keras"]
    with zipfile.ZipFile(out) as zf, zipfile.ZipFile(want) as zw:
        assert zf.testzip() is None and zf.namelist() == zw.namelist()
        a, b = _h5_tensors(zf.read(archive.WEIGHTS)), _h5_tensors(zw.read(archive.WEIGHTS))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    np.testing.assert_array_equal(
        predict(load(out, "keras3-full"), mlp_input()),
        predict(load(want, "keras3-full"), mlp_input()),
    )


def _with_member_after_weights(src: Path, dest: Path) -> Path:
    """``src`` rebuilt with one more member after the weights (as an assets file)."""
    import zipfile

    with zipfile.ZipFile(src) as zs, zipfile.ZipFile(dest, "w") as zd:
        for info in zs.infolist():
            zd.writestr(info, zs.read(info))
        zd.writestr("assets/vocabulary.txt", "a\nb\nc\n" * 1000, zipfile.ZIP_DEFLATED)
    return dest


@pytest.mark.parametrize("zip64", [False, True])
def test_in_place_archives_keep_members_after_the_weights_and_zip64(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zip64: bool
) -> None:
    """Members after the weights are written after their patched bytes, in order; with
    ZIP64 records (forced here by a small limit) the archive reads back the same."""
    import zipfile

    from weightcli.stores import archive

    src = _with_member_after_weights(SAMPLES / "mlp.keras", tmp_path / "src.keras")
    out = tmp_path / "out.keras"
    if zip64:
        monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1000)
    res = run("scale", src, "0.5", "-s", "dense_2/kernel", "-o", out)
    assert res.code == 0, res.err
    monkeypatch.undo()
    with zipfile.ZipFile(src) as z0, zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        assert zf.namelist() == z0.namelist() and zf.namelist()[-1] == "assets/vocabulary.txt"
        at = archive.member_data_offset(out, zf.getinfo(archive.WEIGHTS))
        assert at & (at - 1) == 0  # the premise: patched in place
        header = out.read_bytes()[zf.getinfo(archive.WEIGHTS).header_offset :][:30]
        assert (header[18:22] == b"\xff\xff\xff\xff") is zip64  # sizes in the ZIP64 extra
        for name in z0.namelist():
            if name != archive.WEIGHTS:
                assert zf.read(name) == z0.read(name)
    assert run("verify", "--no-load", out).code == 0
    doc = run("diff", out, src, "--json").json()
    assert [r["name"] for r in doc["tensors"] if r["status"] != "identical"] == ["dense_2/kernel"]


def test_padding_beyond_an_extra_field_takes_the_copy_route(tmp_path: Path) -> None:
    """Members before the weights whose size leaves more room below the next power of
    two than one extra field can pad: no gap is left between members (streaming zip
    readers walk the local headers); the archive is built by copying instead."""
    import zipfile

    from weightcli.stores import archive

    src = tmp_path / "big_meta.keras"
    with zipfile.ZipFile(SAMPLES / "mlp.keras") as zs, zipfile.ZipFile(src, "w") as zd:
        for info in zs.infolist():
            data = zs.read(info)
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta["notes"] = "x" * 140_000
                data = json.dumps(meta).encode()
            zd.writestr(info, data)
    with zipfile.ZipFile(src) as zs:
        free = zs.getinfo(archive.WEIGHTS).header_offset
    with archive.ArchiveStore(src) as store:  # the premise: more than an extra field
        assert archive._data_offset(store) - free - 46 > archive.MAX_EXTRA
    out = tmp_path / "out.keras"
    assert run("scale", src, "0.5", "-o", out).code == 0
    with zipfile.ZipFile(out) as zf, zipfile.ZipFile(src) as z0:
        assert zf.testzip() is None and zf.namelist() == z0.namelist()
        infos = zf.infolist()
        for before, after in zip(infos, infos[1:], strict=False):
            assert (
                after.header_offset
                == archive.member_data_offset(out, before) + before.compress_size
            )
        assert zf.read("metadata.json") == z0.read("metadata.json")
    doc = run("diff", out, src, "--json").json()
    assert {r["status"] for r in doc["tensors"]} == {"differs"}


def test_the_history_digest_of_a_sharded_map_covers_its_shards(tmp_path: Path) -> None:
    """The source digest of a weights map is over the map and every shard it names: a
    shard changed is a different source (it covered the JSON only)."""
    import hashlib
    import shutil

    from helpers import run

    src = shutil.copytree(SAMPLES / "mlp_sharded", tmp_path / "sh")
    wmap = src / "mlp.weights.json"

    def recorded(out: Path) -> dict:
        assert run("scale", wmap, "0.5", "-o", out, "--digest", "sha256").code == 0
        return dict(
            run("inspect", out, "--json", "--no-stats").json()["history"][-1]["source_digest"]
        )

    first = recorded(tmp_path / "a.weights.json")
    files = [wmap, *sorted(src.glob("mlp_*.weights.h5"))]
    # one resource per file of the checkpoint, each an independent sha256 of its bytes
    assert first["resources"] == sorted(
        (
            {
                "name": f.name,
                "algorithm": "sha256",
                "digest": hashlib.sha256(f.read_bytes()).hexdigest(),
            }
            for f in files
        ),
        key=lambda r: r["name"],
    )
    shard = files[2]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # a byte of a shard (not of the map)
    shard.write_bytes(bytes(data))
    assert recorded(tmp_path / "b.weights.json") != first


def test_a_tf_keras_windows_archive_names_as_keras_does(tmp_path: Path) -> None:
    """tf.keras 2.15 on Windows writes ``layers\\\\dense/vars/0`` group names and keeps
    metrics state (``metrics\\\\precision/vars/0``): the same names as the sample's, the
    metrics hidden as optimizer state is, the writer read from metadata.json."""
    import io
    import json
    import zipfile

    import h5py

    src = SAMPLES / "mlp.keras"
    with zipfile.ZipFile(src) as z:
        weights = z.read("model.weights.h5")
        metadata = json.loads(z.read("metadata.json"))
    staged = tmp_path / "w.h5"
    with h5py.File(io.BytesIO(weights)) as fin, h5py.File(staged, "w") as fout:

        def copy(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                parts = name.split("/")
                # "layers/dense/vars/0" -> group "layers\\dense", then "vars/0"
                win = "\\".join(parts[:2]) + "/" + "/".join(parts[2:]) if len(parts) > 3 else name
                fout.create_dataset(win, data=obj[()])
                for k, v in fin[name.rsplit("/", 1)[0]].attrs.items():
                    fout[win.rsplit("/", 1)[0]].attrs[k] = v

        fin.visititems(copy)
        fout.create_dataset("metrics\\precision/vars/0", data=np.zeros(3, "float32"))
    metadata["keras_version"] = "2.15.0"
    win = tmp_path / "win.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(win, "w") as zout:
        for info in zin.infolist():
            if info.filename == "model.weights.h5":
                zout.writestr(info, staged.read_bytes())
            elif info.filename == "metadata.json":
                zout.writestr(info, json.dumps(metadata))
            else:
                zout.writestr(info, zin.read(info.filename))
    with h5py.File(staged) as f:  # the premise: backslashes are in the group names
        assert any("\\" in k for k in f)

    def names(path: Path, *extra: str) -> list[str]:
        doc = run("inspect", path, "--no-stats", "--json", *extra).json()
        return [t["name"] for t in doc["tensors"]]

    assert names(win) == names(src)
    assert "metrics/precision/0" in names(win, "--all")
    doc = run("inspect", win, "--no-stats", "--json").json()
    assert doc["writer"] == "Keras 2.15.0"


def test_nested_model_without_recorded_names_is_named_by_its_layers(tmp_path: Path) -> None:
    """Keras 3.5 recorded no layer names in the weights file: a nested model's inner
    tensors are named by its layers (functional/dense_8/kernel), not by the file's
    generated groups (functional/dense/kernel), the same for every command."""
    import io
    import subprocess
    import sys
    import zipfile

    import h5py

    code = f"""
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
inner_in = keras.Input((4,))
h = keras.layers.Dense(5, name="dense_8")(inner_in)
h = keras.layers.Dense(3, name="dense_9")(h)
inner = keras.Model(inner_in, h, name="functional_4")
x = keras.Input((4,))
y = keras.layers.Dense(2, name="head")(inner(x))
keras.Model(x, y, name="outer").save({str(tmp_path / "nested.keras")!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    src = tmp_path / "nested.keras"
    stripped = tmp_path / "stripped.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(stripped, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "model.weights.h5":
                buf = io.BytesIO(data)
                with h5py.File(buf, "r+") as f:
                    f.visititems(
                        lambda n, o: o.attrs.__delitem__("name") if "name" in o.attrs else None
                    )
                data = buf.getvalue()
            zout.writestr(info, data)

    def names(path: Path) -> list[str]:
        return [t["name"] for t in run("inspect", path, "--no-stats", "--json").json()["tensors"]]

    want = names(src)
    assert "functional_4/dense_8/kernel" in want
    assert names(stripped) == want
    changed = []
    for model in (src, stripped):
        out = tmp_path / f"s_{model.stem}.keras"
        res = run("scale", model, "2", "-s", "functional_4/dense_8", "-o", out, "--json")
        assert res.code == 0, res.err
        changed.append({t["name"] for t in res.json()["tensors"]})
    assert changed[0] == changed[1] and "functional_4/dense_8/kernel" in changed[1]
    assert (
        run("freeze", stripped, "-s", "functional_4/dense_8", "-o", tmp_path / "f.keras").code == 0
    )
