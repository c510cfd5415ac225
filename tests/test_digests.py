"""Provenance digests (BLAKE3 by default, sha256, none) in the model-signing manifest's
shape, ``verify --source``, and per-tensor digests (``inspect --digests``). The oracles:
the ``blake3`` package and ``hashlib`` over the files' bytes, numpy arrays read by h5py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import blake3
import h5py
import numpy as np
import pytest
from helpers import SAMPLES, run
from test_bad_input import assert_clean_error

import weightcli


def _history(path: Path) -> list[dict]:
    return run("inspect", path, "--json", "--no-stats").json()["history"]


def _root(resources: list[dict]) -> str:
    return hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()


def test_the_default_is_blake3_in_the_model_signing_shape(tmp_path: Path) -> None:
    src = SAMPLES / "mlp.keras"
    out = tmp_path / "half.keras"
    assert run("scale", src, "0.5", "-o", out).code == 0
    recorded = _history(out)[-1]["source_digest"]
    assert recorded["serialization"] == {"method": "files", "hash_type": "blake3"}
    assert recorded["resources"] == [
        {
            "name": "mlp.keras",
            "algorithm": "blake3",
            "digest": blake3.blake3(src.read_bytes()).hexdigest(),
        }
    ]
    assert recorded["root_digest"] == {"sha256": _root(recorded["resources"])}


def test_sha256_by_option_and_by_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = SAMPLES / "mlp.weights.h5"
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    assert (
        run(
            "clip", src, "--abs-max", "1", "-o", tmp_path / "a.weights.h5", "--digest", "sha256"
        ).code
        == 0
    )
    monkeypatch.setenv("WEIGHTCLI_DIGEST", "sha256")
    assert run("clip", src, "--abs-max", "1", "-o", tmp_path / "b.weights.h5").code == 0
    for name in ("a", "b"):
        (res,) = _history(tmp_path / f"{name}.weights.h5")[-1]["source_digest"]["resources"]
        assert res == {"name": src.name, "algorithm": "sha256", "digest": want}
    monkeypatch.setenv("WEIGHTCLI_DIGEST", "md5")
    assert_clean_error(
        run("clip", src, "--abs-max", "1", "-o", tmp_path / "c.weights.h5"), "WEIGHTCLI_DIGEST"
    )
    assert not (tmp_path / "c.weights.h5").exists()


def test_a_folder_checkpoint_has_one_resource_per_file(tmp_path: Path) -> None:
    src = shutil.copytree(SAMPLES / "mlp_export", tmp_path / "src")
    out = tmp_path / "out"
    assert run("scale", src, "2", "-o", out).code == 0
    recorded = _history(out)[-1]["source_digest"]
    files = sorted(
        Path(folder, n).relative_to(src).as_posix()
        for folder, _, names in os.walk(src)
        for n in names
    )
    assert [r["name"] for r in recorded["resources"]] == files  # the premise: several files
    assert len(files) > 2
    for r in recorded["resources"]:
        assert r["digest"] == blake3.blake3((src / r["name"]).read_bytes()).hexdigest()


def test_none_records_that_no_digest_was_taken(tmp_path: Path) -> None:
    out = tmp_path / "x.keras"
    assert run("scale", SAMPLES / "mlp.keras", "2", "-o", out, "--digest", "none").code == 0
    assert _history(out)[-1]["source_digest"] == {"serialization": {"method": "none"}}
    res = run("verify", out, "--source", SAMPLES / "mlp.keras", "--no-load")
    assert_clean_error(res, "no digest")


def test_verify_source(tmp_path: Path) -> None:
    src = SAMPLES / "mlp.keras"
    out = tmp_path / "half.keras"
    assert run("scale", src, "0.5", "-o", out).code == 0
    ok = run("verify", out, "--source", src, "--no-load", "--json")
    assert ok.code == 0, ok.out
    assert [c["status"] for c in ok.json()["checks"] if c["name"].startswith("source")] == ["PASS"]
    other = SAMPLES / "cnn.keras"
    bad = run("verify", out, "--source", other, "--no-load")
    assert bad.code == 1 and "none of the recorded sources" in bad.out
    # a file never written by weightcli has no sources to check
    assert_clean_error(run("verify", src, "--source", src, "--no-load"), "no weightcli history")


def test_verify_source_of_a_merge_checks_every_input(tmp_path: Path) -> None:
    a = SAMPLES / "mlp.weights.h5"
    b = tmp_path / "b.weights.h5"
    weightcli.scale(a, 2.0, output=b)
    out = tmp_path / "soup.weights.h5"
    assert run("merge", a, b, "-o", out).code == 0
    res = run("verify", out, "--source", a, "--source", b, "--no-load", "--json")
    assert res.code == 0, res.out
    assert sum(c["name"].startswith("source") for c in res.json()["checks"]) == 2
    c = tmp_path / "c.weights.h5"
    weightcli.scale(a, 3.0, output=c)
    assert run("verify", out, "--source", c, "--no-load").code == 1


def test_verify_source_reads_an_old_sha256_history(tmp_path: Path) -> None:
    """Histories written before BLAKE3 hold ``source_sha256``: still checked."""
    src = SAMPLES / "mlp.weights.h5"
    out = shutil.copy(src, tmp_path / "old.weights.h5")
    entry = {"tool": "weightcli", "source": src.name, "steps": [], "changed": []}
    entry["source_sha256"] = hashlib.sha256(src.read_bytes()).hexdigest()
    with h5py.File(out, "r+") as f:
        f.attrs["weightcli_history"] = json.dumps([entry])
    assert run("verify", out, "--source", src, "--no-load").code == 0
    assert run("verify", out, "--source", SAMPLES / "cnn.weights.h5", "--no-load").code == 1


MLP = [
    "mlp.keras",
    "mlp_keras3.h5",
    "mlp.weights.h5",
    "mlp_folder",
    "mlp_export",
    "mlp_ckpt",
    "mlp_sharded/mlp.weights.json",
]


def test_tensor_digests_are_equal_in_every_format(tmp_path: Path) -> None:
    with h5py.File(SAMPLES / "mlp_keras3.h5") as f:  # names as stored, read by h5py
        oracle = {}
        for tensor in ("dense_1/kernel", "dense_1/bias", "dense_2/kernel", "logits/bias"):
            layer = tensor.split("/")[0]
            value = np.ascontiguousarray(f[f"model_weights/{layer}/mlp/{tensor}"][()])
            oracle[tensor] = blake3.blake3(value.astype("<f4").tobytes()).hexdigest()
    for name in MLP:
        doc = run("inspect", SAMPLES / name, "--digests", "--no-stats", "--json").json()
        got = {t["name"]: t["blake3"] for t in doc["tensors"]}
        for tensor, want in oracle.items():
            assert got[tensor] == want, (name, tensor)
    # with statistics too (one pass), and in small blocks: the same digests
    res = weightcli.inspect(SAMPLES / "mlp.keras")
    assert all(t.blake3 is None for t in res.tensors)
    from weightcli.commands import inspect as inspect_cmd

    request = inspect_cmd.InspectRequest(digests=True, block_elems=7)
    small = inspect_cmd.run(request, SAMPLES / "mlp.keras")
    assert {t.info.name: t.blake3 for t in small.tensors if t.info.name in oracle} == oracle
    assert all(t.stats is not None for t in small.tensors)
    # a scaled tensor changes its digest, the others keep theirs
    out = tmp_path / "x.keras"
    weightcli.scale(SAMPLES / "mlp.keras", 2.0, output=out, select=["dense_2/kernel"])
    after = {
        t["name"]: t["blake3"] for t in run("inspect", out, "--digests", "--json").json()["tensors"]
    }
    assert after["dense_2/kernel"] != oracle["dense_2/kernel"]
    assert after["dense_1/kernel"] == oracle["dense_1/kernel"]
    assert "BLAKE3" in run("inspect", out, "--digests", "--no-stats").out


def test_hashing_in_a_forked_child_does_not_hang(tmp_path: Path) -> None:
    """BLAKE3's thread pool does not survive a fork (every model runs in a forked
    child): a child of a process that hashed on every core hashes on one, and ends."""
    import signal

    from weightcli import digest

    f = tmp_path / "x.bin"
    f.write_bytes(os.urandom(1 << 22))
    want = blake3.blake3(f.read_bytes()).hexdigest()
    assert digest.file_digest(f, "blake3") == want  # this process has the pool now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        signal.alarm(20)  # a hang ends the child, and the test fails
        os.write(w, digest.file_digest(f, "blake3").encode())
        os._exit(0)
    os.close(w)
    got = os.read(r, 100).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert got == want


def test_verify_source_of_a_transplant_checks_source_and_target(tmp_path: Path) -> None:
    source, target = SAMPLES / "mlp.keras", SAMPLES / "mlp_keras3.h5"
    out = tmp_path / "t.h5"
    assert run("transplant", source, target, "-o", out).code == 0
    res = run("verify", out, "--source", source, "--source", target, "--no-load", "--json")
    assert res.code == 0, res.out
    names = [c["name"] for c in res.json()["checks"] if c["status"] == "PASS"]
    assert "source mlp.keras" in names and "source mlp_keras3.h5" in names
    assert run("verify", out, "--source", SAMPLES / "cnn.keras", "--no-load").code == 1


def test_a_blake3_digest_maps_the_file_a_window_at_a_time(tmp_path: Path) -> None:
    """The digest equals BLAKE3 of the bytes across window edges, and hashing a file
    many times the window's size keeps this process's resident memory bounded (the
    whole file mapped at once counted every page: 1 GiB resident for a 1 GB model)."""
    import subprocess
    import sys

    import blake3

    from weightcli.digest import MMAP_WINDOW, file_digest

    f = tmp_path / "w.bin"
    data = np.random.default_rng(0).integers(0, 256, 3 * MMAP_WINDOW + 123, np.uint8)
    f.write_bytes(data.tobytes())
    assert file_digest(f, "blake3") == blake3.blake3(data.tobytes()).hexdigest()
    big = tmp_path / "big.bin"
    with big.open("wb") as fh:
        fh.write(data.tobytes() * 3)  # about 150 MiB
    code = (  # VmHWM: this process's peak resident memory (ru_maxrss outlives an exec)
        "import re; from pathlib import Path; from weightcli.digest import file_digest\n"
        "def hwm(): return int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])\n"
        "before = hwm()\n"
        f"file_digest(Path({str(big)!r}), 'blake3')\n"
        "print((hwm() - before) // 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grew = int(done.stdout)
    assert big.stat().st_size > 8 * MMAP_WINDOW  # premise: far more than one window
    assert grew < 3 * (MMAP_WINDOW >> 20), grew  # MiB
