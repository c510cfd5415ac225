"""Checkpoints in object storage: every command on s3:// URLs against a real
S3-compatible server (moto's, started on 127.0.0.1 by a fixture), checked against the
same command on the local files; fsspec's memory:// filesystem for the fast paths."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import ROOT, SAMPLES, run

from weightcli.stores import remote


def _url(s3, key: str) -> str:
    return f"s3://{s3.bucket}/{key}"


# -- reading -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "mlp_keras3.h5",
        "mlp.keras",
        "mlp.weights.h5",
        "cnn_tfkeras.h5",
        "mlp_export",
        "mlp_ckpt",
        "mlp_sharded/mlp.weights.json",
        "mlp_folder",
    ],
)
def test_inspect_and_diff_read_every_format_from_s3(s3, name: str) -> None:
    url = _url(s3, f"m/{name}")
    here = run("inspect", SAMPLES / name, "--json").json()
    there = run("inspect", url, "--json")
    assert there.code == 0, there.err
    doc = there.json()
    assert doc["tensors"] == here["tensors"]  # same names, shapes and statistics
    assert doc["format"] == here["format"] and doc["bytes_fetched"] > 0
    res = run("diff", url, SAMPLES / name)  # the oracle: the local file
    assert res.code == 0, res.out + res.err
    assert run("verify", "--no-load", url).code == 0


def _big_h5(path: Path, mib: int) -> Path:
    """A Keras-like weights file of ``mib`` MiB: metadata small, data large."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "3.0.0"
        n = mib * (1 << 20) // 4 // 4096
        for i in range(4):
            g = f.create_group(f"layers/dense_{i}/vars")
            g["0"] = rng.standard_normal((n // 4, 4096), dtype=np.float32)
            g["1"] = np.zeros(4096, np.float32)
    return path


class _CountingProxy:
    """A TCP proxy in front of the S3 server counting the bytes the server sends: an
    oracle for what a command fetched that does not rely on weightcli's own count."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit("//", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.served = 0
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, up, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if count:
                    with self.lock:
                        self.served += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


def test_inspect_no_stats_of_a_large_file_fetches_under_one_percent(
    s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = _big_h5(tmp_path / "big.weights.h5", 96)
    size = big.stat().st_size
    s3.put_file(str(big), f"{s3.bucket}/big/big.weights.h5")
    proxy = _CountingProxy(os.environ["AWS_ENDPOINT_URL"])
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        remote.forget()
        res = run("inspect", _url(s3, "big/big.weights.h5"), "--no-stats", "--json")
        assert res.code == 0, res.err
        served = proxy.served
    finally:
        proxy.close()
    doc = res.json()
    assert doc["totals"]["bytes"] > 90 << 20  # the premise: a big file
    assert 0 < doc["bytes_fetched"] < 0.01 * size
    assert served < 0.01 * size, f"the server sent {served} bytes of {size}"
    assert served >= doc["bytes_fetched"]  # weightcli's count is not above what was sent


def test_statistics_stream_by_range(s3, tmp_path: Path) -> None:
    big = _big_h5(tmp_path / "big.weights.h5", 24)
    s3.put_file(str(big), f"{s3.bucket}/big/s.weights.h5")
    res = run("inspect", _url(s3, "big/s.weights.h5"), "--json")
    want = run("inspect", big, "--json").json()
    assert res.json()["tensors"] == want["tensors"]
    # every tensor byte read once (plus metadata); no second copy of the file
    assert res.json()["bytes_fetched"] < 1.05 * big.stat().st_size


# -- writing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "out"),
    [
        ("mlp_keras3.h5", "o/s.h5"),
        ("mlp.keras", "o/s.keras"),
        ("mlp_export", "o/sm"),
        ("mlp_ckpt", "o/ck/ckpt"),
        ("mlp_sharded/mlp.weights.json", "o/sh/mlp.weights.json"),
    ],
)
def test_transforms_write_to_s3(s3, tmp_path: Path, name: str, out: str) -> None:
    local = tmp_path / "local"
    local.mkdir()
    expect = local / Path(out).name
    want = run("scale", SAMPLES / name, "0.5", "-o", expect)
    assert want.code == 0, want.err
    got = run("scale", _url(s3, f"m/{name}"), "0.5", "-o", _url(s3, out))
    assert got.code == 0, got.err
    assert run("diff", _url(s3, out), expect).code == 0  # the same tensors as on disk
    assert run("scale", _url(s3, f"m/{name}"), "0.5", "-o", _url(s3, out)).code == 2  # exists
    assert run("verify", "--no-load", _url(s3, out)).code == 0


def test_a_remote_output_loads_in_keras(s3, tmp_path: Path) -> None:
    from helpers import keras_quiet, mlp_input

    res = run("clip", _url(s3, "m/mlp.keras"), "--abs-max", "0.05", "-o", _url(s3, "o/c.keras"))
    assert res.code == 0, res.err
    s3.get_file(f"{s3.bucket}/o/c.keras", str(tmp_path / "c.keras"))
    keras = keras_quiet()
    model = keras.models.load_model(tmp_path / "c.keras")
    weights = np.concatenate([w.ravel() for w in model.get_weights()])
    assert np.abs(weights).max() <= 0.05 + 1e-7
    assert np.isfinite(model.predict(mlp_input(), verbose=0)).all()


def test_edits_and_merges_on_s3(s3, tmp_path: Path) -> None:
    m = _url(s3, "m/mlp_keras3.h5")
    assert run("dump", m, "-s", "dense_1/kernel", "-o", tmp_path / "k.npz").code == 0
    k = np.load(tmp_path / "k.npz")["dense_1/kernel"]
    np.save(tmp_path / "k2.npy", k * 2)
    for args in (
        ["set", m, f"dense_1/kernel={tmp_path / 'k2.npy'}", "-o", _url(s3, "o/set.h5")],
        [
            "reinit",
            m,
            "-s",
            "dense_2",
            "--initializer",
            "glorot_uniform",
            "-o",
            _url(s3, "o/re.h5"),
        ],
        ["freeze", _url(s3, "m/mlp.keras"), "-s", "dense*", "-o", _url(s3, "o/fz.keras")],
        ["merge", m, str(SAMPLES / "mlp_keras3.h5"), "-o", _url(s3, "o/mean.h5")],
        ["transplant", _url(s3, "m/mlp.keras"), m, "-o", _url(s3, "o/tp.h5")],
    ):
        res = run(*args)
        assert res.code == 0, (args, res.err)
    back = tmp_path / "back.npz"
    assert run("dump", _url(s3, "o/set.h5"), "-s", "dense_1/kernel", "-o", back).code == 0
    assert np.array_equal(np.load(back)["dense_1/kernel"], k * 2)
    assert run("diff", _url(s3, "o/mean.h5"), SAMPLES / "mlp_keras3.h5").code == 0
    assert run("diff", _url(s3, "o/tp.h5"), SAMPLES / "mlp.keras").code == 0


def test_recursive_discovers_models_under_a_prefix(s3) -> None:
    res = run("inspect", "-r", _url(s3, "m"), "--no-stats", "--json")
    here = run("inspect", "-r", SAMPLES, "--no-stats", "--json")
    assert res.code == 0, res.err
    found = {Path(d["path"]).name for d in res.lines()[:-1]}
    assert found == {
        "mlp_keras3.h5",
        "mlp.keras",
        "mlp.weights.h5",
        "cnn_tfkeras.h5",
        "mlp_export",
        "ckpt",
        "mlp.weights.json",
        "mlp_folder",
    }
    assert found <= {Path(d["path"]).name for d in here.lines()[:-1]}  # the rules of disk
    # As users run it: `python -m weightcli`, whose spawned workers import __main__ again.
    done = subprocess.run(
        [sys.executable, "-m", "weightcli", "inspect", "-r", _url(s3, "m"), "--no-stats", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 9  # 8 models and the summary


def test_a_transform_killed_midway_leaves_no_object(s3, tmp_path: Path) -> None:
    big = _big_h5(tmp_path / "k.weights.h5", 96)
    s3.put_file(str(big), f"{s3.bucket}/big/k.weights.h5")
    out = _url(s3, "o/killed.weights.h5")
    proc = subprocess.Popen(
        [sys.executable, "-m", "weightcli", "scale", _url(s3, "big/k.weights.h5"), "0.5"]
        + ["-o", out],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)
    assert proc.poll() is None, "finished before it could be killed: a bigger file is needed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    s3.invalidate_cache()
    assert not s3.exists(f"{s3.bucket}/o/killed.weights.h5")
    # and one that finishes appears whole
    res = run("scale", _url(s3, "big/k.weights.h5"), "0.5", "-o", out)
    assert res.code == 0, res.err
    s3.invalidate_cache()
    assert s3.info(f"{s3.bucket}/o/killed.weights.h5")["size"] >= big.stat().st_size


# -- bad input ----------------------------------------------------------------------------------


def _one_line_exit_2(res) -> str:
    assert res.code == 2, res.out + res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert "Traceback" not in res.err
    return lines[0]


def test_missing_bucket_key_and_output_bucket(s3) -> None:
    line = _one_line_exit_2(run("inspect", "s3://no-such-bucket-here/m.h5"))
    assert "no-such-bucket-here" in line
    line = _one_line_exit_2(run("inspect", _url(s3, "m/nothing.h5")))
    assert "nothing.h5" in line and "no such" in line
    line = _one_line_exit_2(
        run("scale", _url(s3, "m/mlp_keras3.h5"), "2", "-o", "s3://no-such-bucket-here/x.h5")
    )
    assert "no bucket" in line


def test_denied_credentials(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import _start_moto

    proc, endpoint = _start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # checks keys
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        remote.forget()
        line = _one_line_exit_2(run("inspect", _url(s3, "m/mlp_keras3.h5")))
        assert "denied" in line.lower() or "access key" in line.lower(), line
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_unreachable_endpoint(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv(remote.OPTIONS_ENV, "{}")
    remote.forget()
    started = time.monotonic()
    line = _one_line_exit_2(
        run(
            "--storage-option",
            "config_kwargs.connect_timeout=1",
            "--storage-option",
            "config_kwargs.retries.max_attempts=1",
            "inspect",
            _url(s3, "m/mlp_keras3.h5"),
        )
    )
    assert "127.0.0.1:9" in line or "connect" in line.lower(), line
    assert time.monotonic() - started < 60


def test_without_the_extra_a_url_says_what_to_install(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['fsspec'] = None  # as if weightcli[remote] were not installed\n"
        "from weightcli.cli import main\n"
        "main(['inspect', 's3://bucket/model.h5'])\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "weightcli: error: s3://bucket/model.h5: s3:// paths need fsspec: "
        "pip install 'weightcli[remote]'"
    ]


# -- memory:// (fsspec's in-process filesystem): the same paths, fast -------------------------


@pytest.fixture
def memfs():
    import fsspec

    remote.forget()
    fs = fsspec.filesystem("memory")
    fs.rm("/mem", recursive=True) if fs.exists("/mem") else None
    fs.put_file(str(SAMPLES / "mlp_keras3.h5"), "/mem/a.h5")
    fs.put(str(SAMPLES / "mlp_export"), "/mem/sm", recursive=True)
    yield fs
    fs.rm("/mem", recursive=True)
    remote.forget()


def test_memory_filesystem_round_trip(memfs) -> None:
    assert run("scale", "memory://mem/a.h5", "3", "-o", "memory://mem/out/a3.h5").code == 0
    assert (
        run("scale", "memory://mem/out/a3.h5", str(1 / 3), "-o", "memory://mem/out/a1.h5").code == 0
    )
    res = run("diff", "memory://mem/out/a1.h5", SAMPLES / "mlp_keras3.h5", "--rtol", "1e-6")
    assert res.code == 0, res.out
    assert run("diff", "memory://mem/sm", SAMPLES / "mlp_export").code == 0
    # in place on a remote object: rewritten whole (float32 0.1 is 0.10000000149)
    assert run("clip", "memory://mem/a.h5", "--abs-max", "0.1", "--in-place").code == 0
    doc = run("inspect", "memory://mem/a.h5", "--json").json()
    assert max(t["stats"]["abs_max"] for t in doc["tensors"]) == pytest.approx(0.1)


def test_storage_options_reach_the_filesystem(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without AWS_ENDPOINT_URL, only --storage-option can name the server."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv(remote.OPTIONS_ENV, "{}")
    remote.forget()
    res = run(
        "--storage-option", f"endpoint_url={endpoint}", "inspect", _url(s3, "m/mlp.keras")
    )  # fmt: skip
    assert res.code == 0, res.err
    bad = run("--storage-option", "novalue", "inspect", _url(s3, "m/mlp.keras"))
    assert "KEY=VALUE" in _one_line_exit_2(bad)
    # an option that cannot apply (no URL on the command line) is an error, not ignored
    local = run("--storage-option", "anon=true", "inspect", SAMPLES / "mlp_keras3.h5")
    assert "no argument here is one" in _one_line_exit_2(local)


def test_commands_that_run_the_model_take_urls(s3, tmp_path: Path) -> None:
    """verify (loading and running the model) and scale --by-activation: the frameworks
    read local files, so weightcli hands them downloaded copies."""
    s3.put_file(str(SAMPLES / "mlp_calibration.npy"), f"{s3.bucket}/m/calib.npy")
    res = run(
        "verify", _url(s3, "m/mlp.keras"), "--reference", _url(s3, "m/mlp_keras3.h5"), "--json"
    )
    assert res.code == 0, res.out + res.err
    names = {c["name"]: c["status"] for c in res.json()["checks"]}
    assert names["loads"] == "PASS" and names["outputs match reference"] == "PASS"
    res = run(
        "scale", _url(s3, "m/mlp.keras"), "--by-activation",
        "--calibration", _url(s3, "m/calib.npy"), "-o", _url(s3, "o/act.keras"),
    )  # fmt: skip
    assert res.code == 0, res.err
    local = tmp_path / "act.keras"
    assert run("scale", SAMPLES / "mlp.keras", "--by-activation", "--calibration",
               SAMPLES / "mlp_calibration.npy", "-o", local).code == 0  # fmt: skip
    assert run("diff", _url(s3, "o/act.keras"), local).code == 0
    # the downloaded copies are removed when the process ends
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "weightcli", "verify", _url(s3, "o/act.keras")],
        env={**os.environ, "TMPDIR": str(tmp)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert list(tmp.iterdir()) == []
