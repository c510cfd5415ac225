"""Zip members that lie (hostile input, round two): a declared size far below what the
compressed stream holds, methods Keras never writes, two members of one name. Each is
one line and exit 2, in bounded memory, with the input untouched."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import SAMPLES, run

PEAK_MIB = 200

# Runs weightcli and prints the largest resident size of it and its children (KiB).
MEASURED = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run([sys.executable, '-m', 'weightcli', *sys.argv[1:]], capture_output=True, text=True)\n"
    "sys.stderr.write(r.stderr)\n"
    "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def measured(*args: object) -> tuple[int, int, str]:
    res = subprocess.run(
        [sys.executable, "-c", MEASURED, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    code, kib = res.stdout.split()
    return int(code), int(kib) // 1024, res.stderr


def _lying_deflate(dst: Path, member: str, inflated: int, declared: int) -> Path:
    """mlp.keras whose ``member`` is ``inflated`` zero bytes, deflated, declaring ``declared``."""
    with zipfile.ZipFile(SAMPLES / "mlp.keras") as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename != member:
                zout.writestr(info, zin.read(info.filename))
                continue
            big = zipfile.ZipInfo(member)
            big.compress_type = zipfile.ZIP_DEFLATED
            with zout.open(big, "w", force_zip64=False) as out:
                chunk = bytes(1 << 20)
                for _ in range(inflated >> 20):
                    out.write(chunk)
    # Rewrite the member's declared (uncompressed) size in both headers.
    data = bytearray(dst.read_bytes())
    with zipfile.ZipFile(dst) as z:
        info = z.getinfo(member)
    struct.pack_into("<I", data, info.header_offset + 22, declared)
    at = 0
    while (at := data.find(b"PK\x01\x02", at)) >= 0:
        (name_len,) = struct.unpack_from("<H", data, at + 28)
        if bytes(data[at + 46 : at + 46 + name_len]) == member.encode():
            struct.pack_into("<I", data, at + 24, declared)
            break
        at += 4
    dst.write_bytes(bytes(data))
    with zipfile.ZipFile(dst) as z:  # the premise: the lie is what zipfile reads
        got = z.getinfo(member)
        assert got.file_size == declared and got.compress_type == zipfile.ZIP_DEFLATED
    return dst


@pytest.mark.parametrize("member", ["config.json", "model.weights.h5"])
def test_a_deflated_member_that_lies_about_its_size(tmp_path: Path, member: str) -> None:
    bomb = _lying_deflate(tmp_path / "bomb.keras", member, 600 << 20, 4096)
    before = bomb.read_bytes()
    code, peak, err = measured("inspect", bomb)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert peak < PEAK_MIB, f"{peak} MiB"
    assert bomb.read_bytes() == before


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_members_compressed_as_keras_never_does_are_refused(tmp_path: Path, method: int) -> None:
    path = tmp_path / "odd.keras"
    with zipfile.ZipFile(SAMPLES / "mlp.keras") as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename), compress_type=method)
    res = run("inspect", path)
    assert res.code == 2 and "refused" in res.err and len(res.err.strip().splitlines()) == 1


def test_an_archive_with_two_weights_members_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.keras"
    shutil.copyfile(SAMPLES / "mlp.keras", path)
    with zipfile.ZipFile(SAMPLES / "mlp.keras") as zin, zipfile.ZipFile(path, "a") as zout:
        zout.writestr("model.weights.h5", zin.read("model.weights.h5"))
    for args in (["inspect", path], ["scale", path, "0.5", "-o", tmp_path / "o.keras"]):
        res = run(*args)
        assert res.code == 2 and "two members" in res.err, res.err
    assert not (tmp_path / "o.keras").exists()


def test_a_compressed_archive_still_reads_and_transforms(tmp_path: Path) -> None:
    """The bounded reader against zipfile's: a deflated .keras reads the same values."""
    path = tmp_path / "deflated.keras"
    with zipfile.ZipFile(SAMPLES / "mlp.keras") as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            zout.writestr(
                info.filename, zin.read(info.filename), compress_type=zipfile.ZIP_DEFLATED
            )
    a = run("inspect", SAMPLES / "mlp.keras", "--json").json()
    b = run("inspect", path, "--json").json()
    assert [t["stats"] for t in a["tensors"]] == [t["stats"] for t in b["tensors"]]
    res = run("scale", path, "0.5", "-o", tmp_path / "half.keras")
    assert res.code == 0, res.err
    assert json.loads(zipfile.ZipFile(tmp_path / "half.keras").read("config.json"))


def test_a_file_of_many_small_tensors_is_listed_in_bounded_memory(tmp_path: Path) -> None:
    """20,000 datasets in a few MB: listed with HDF5's metadata cache bounded and no
    dataset held open (before: about 1 GB for 60,000)."""
    import h5py
    import numpy as np

    path = tmp_path / "many.weights.h5"
    with h5py.File(path, "w") as f:
        for i in range(10_000):
            g = f.create_group(f"layers/dense_{i}/vars")
            g.create_dataset("0", data=np.zeros((2, 2), "f4"))
            g.create_dataset("1", data=np.zeros((2,), "f4"))
    code, peak, err = measured("inspect", path, "--no-stats", "--json")
    assert code == 0, err
    assert peak < PEAK_MIB, f"{peak} MiB"


def test_a_map_of_many_shards_keeps_few_open(tmp_path: Path) -> None:
    """A weights map of 40 shards (more than are kept open): listed, read and scaled
    with at most AWAKE_SHARDS open at once; values against numpy."""
    import h5py
    import numpy as np

    from weightcli.stores import open_store
    from weightcli.stores.sharded import AWAKE_SHARDS

    rng = np.random.default_rng(0)
    weight_map, values = {}, {}
    for i in range(40):
        name = f"m_{i:05d}.weights.h5"
        with h5py.File(tmp_path / name, "w") as f:
            g = f.create_group(f"layers/dense_{i}/vars")
            g.attrs["name"] = f"dense_{i}"
            values[i] = rng.normal(size=(3, 4)).astype("float32")
            g.create_dataset("0", data=values[i])
        weight_map[f"/layers/dense_{i}/vars"] = [name]
    (tmp_path / "m.weights.json").write_text(json.dumps({"weight_map": weight_map}))
    with open_store(tmp_path / "m.weights.json") as store:
        open_now = sum(not s._asleep for s in store.stores)  # type: ignore[attr-defined]
        assert open_now <= AWAKE_SHARDS < 40
        for t in store.tensors():
            store.read(t)
        assert sum(not s._asleep for s in store.stores) <= AWAKE_SHARDS  # type: ignore[attr-defined]
    out = tmp_path / "o" / "half.weights.json"
    out.parent.mkdir()
    res = run("scale", tmp_path / "m.weights.json", "0.5", "-o", out)
    assert res.code == 0, res.err
    with open_store(out) as store:
        for t in store.tensors():
            i = int(t.name.split("/")[0].split("_")[1])
            np.testing.assert_array_equal(store.read(t), values[i] * np.float32(0.5))


def test_a_damaged_stored_member_is_found_before_its_data_is_used(tmp_path: Path) -> None:
    """A stored weights member is not read whole to list it (its CRC-32 costs 0.2 s a
    GB): ``inspect --no-stats`` of a 16 MiB member reads a small part of it. A flipped
    byte in its data is found before the first figure or output: statistics, a
    transform, an export refuse it (exit 2, one line, nothing written), verify fails
    the check (exit 1)."""
    import h5py
    import numpy as np

    from weightcli.commands import inspect as inspect_cmd

    weights = tmp_path / "w.h5"
    with zipfile.ZipFile(SAMPLES / "mlp.keras") as z:
        weights.write_bytes(z.read("model.weights.h5"))
    with h5py.File(weights, "a") as f:  # the first kernel made 16 MiB (contiguous)
        del f["layers/dense/vars/0"]
        f["layers/dense/vars/0"] = np.ones((4096, 1024), dtype=np.float32)
        big_at = f["layers/dense/vars/0"].id.get_offset()
    good = tmp_path / "good.keras"
    with zipfile.ZipFile(SAMPLES / "mlp.keras") as zin, zipfile.ZipFile(good, "w") as zout:
        for info in zin.infolist():
            data = weights.read_bytes() if info.filename == "model.weights.h5" else zin.read(info)
            zout.writestr(info.filename, data, compress_type=zipfile.ZIP_STORED)
    with zipfile.ZipFile(good) as z:
        info = z.getinfo("model.weights.h5")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)

    def rchar() -> int:
        text = Path("/proc/self/io").read_text()
        return int(next(line for line in text.splitlines() if line.startswith("rchar")).split()[1])

    before = rchar()
    listed = inspect_cmd.run(inspect_cmd.InspectRequest(with_stats=False), good)
    read = rchar() - before
    assert (4096, 1024) in [t.info.shape for t in listed.tensors]  # premise: listed
    assert read < info.file_size // 8, read  # not the member whole
    before = rchar()
    inspect_cmd.run(inspect_cmd.InspectRequest(), good)
    assert rchar() - before >= info.file_size  # the statistics: checked, then read

    bad = tmp_path / "bad.keras"
    data = bytearray(good.read_bytes())
    data[start + big_at + 1000] ^= 0xFF  # inside the big kernel's data
    bad.write_bytes(bytes(data))
    assert run("inspect", bad, "--no-stats").code == 0  # a listing reads no data
    for args in (
        ["inspect", bad],
        ["scale", bad, "0.5", "-o", tmp_path / "out.keras"],
        # a change that never reads the damaged kernel would copy it: refused too
        ["scale", bad, "0.5", "-s", "dense_1/*", "-o", tmp_path / "out_1.keras"],
        ["freeze", bad, "-s", "dense_1", "-o", tmp_path / "out_f.keras"],
        ["export", bad, "--to", "safetensors", "-o", tmp_path / "out.safetensors"],
        ["dump", bad, "-o", tmp_path / "out.npz"],
    ):
        res = run(*args)
        assert res.code == 2, (args, res.err)
        assert "damaged archive member" in res.err and len(res.err.strip().splitlines()) == 1
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())
    verify = run("verify", bad, "--no-load", "--json")
    assert verify.code == 1 and "CRC" in verify.out
    assert bad.read_bytes() == bytes(data)  # the input untouched
