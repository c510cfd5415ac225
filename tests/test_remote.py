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
    """A TCP proxy in front of the S3 server counting the bytes the server sends and
    receives: an oracle for what a command fetched and uploaded that does not rely on
    weightcli's own count."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit("//", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.served = 0  # server -> client
        self.received = 0  # client -> server
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
            threading.Thread(target=self._pump, args=(client, up, "received"), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, "served"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counter: str) -> None:
        try:
            while data := src.recv(1 << 16):
                with self.lock:
                    setattr(self, counter, getattr(self, counter) + len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


def _counted(monkeypatch: pytest.MonkeyPatch, *args: object):
    """Run a command with every request going through a counting proxy: (result, proxy)."""
    proxy = _CountingProxy(os.environ["AWS_ENDPOINT_URL"])
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        remote.forget()
        res = run(*args)
        assert res.code == 0, res.err
    finally:
        proxy.close()
    return res, proxy


def test_inspect_no_stats_of_a_large_file_fetches_under_one_percent(
    s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = _big_h5(tmp_path / "big.weights.h5", 96)
    size = big.stat().st_size
    s3.put_file(str(big), f"{s3.bucket}/big/big.weights.h5")
    res, proxy = _counted(
        monkeypatch, "inspect", _url(s3, "big/big.weights.h5"), "--no-stats", "--json"
    )
    served = proxy.served
    doc = res.json()
    assert doc["totals"]["bytes"] > 90 << 20  # the premise: a big file
    assert 0 < doc["bytes_fetched"] < 0.01 * size
    assert served < 0.01 * size, f"the server sent {served} bytes of {size}"
    assert served >= doc["bytes_fetched"]  # weightcli's count is not above what was sent


def test_inspect_no_stats_of_a_large_savedmodel_fetches_under_one_percent(
    s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SavedModel written by TensorFlow (two 32 MiB variables): its graph, index and
    object graph are fetched; the variables' data is not."""
    import tensorflow as tf

    module = tf.Module()
    rng = np.random.default_rng(0)
    module.w = tf.Variable(rng.standard_normal((2048, 4096), dtype=np.float32))
    module.v = tf.Variable(rng.standard_normal((2048, 4096), dtype=np.float32))
    module.f = tf.function(
        lambda x: tf.matmul(x, module.w), input_signature=[tf.TensorSpec([None, 2048], tf.float32)]
    )
    tf.saved_model.save(module, str(tmp_path / "sm"))
    size = sum(p.stat().st_size for p in (tmp_path / "sm").rglob("*") if p.is_file())
    s3.put(str(tmp_path / "sm"), f"{s3.bucket}/big/sm", recursive=True)
    res, proxy = _counted(monkeypatch, "inspect", _url(s3, "big/sm"), "--no-stats", "--json")
    served = proxy.served
    doc = res.json()
    assert doc["format"] == run("inspect", tmp_path / "sm", "--json", "--no-stats").json()["format"]
    assert doc["totals"]["bytes"] >= 64 << 20  # the premise: the variables are big
    assert 0 < doc["bytes_fetched"] < 0.01 * size
    assert served < 0.01 * size, f"the server sent {served} bytes of {size}"


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


def _tensors(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.update({n: o[()]}) if isinstance(o, h5py.Dataset) else None)
    return out


def test_unchanged_parts_are_copied_server_side(
    s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scaling one of four 24 MiB kernels of a file in the bucket uploads about that
    kernel: the rest is copied by the server from the source (UploadPartCopy)."""
    big = _big_h5(tmp_path / "big.weights.h5", 96)
    size = big.stat().st_size
    s3.put_file(str(big), f"{s3.bucket}/big/big.weights.h5")
    local = tmp_path / "local.weights.h5"
    want = run("scale", big, "0.5", "-s", "dense_2/kernel", "-o", local)
    assert want.code == 0, want.err
    _, proxy = _counted(
        monkeypatch, "scale", _url(s3, "big/big.weights.h5"), "0.5", "-s", "dense_2/kernel",
        "-o", _url(s3, "o/one.weights.h5"),
    )  # fmt: skip
    sent = proxy.received
    print(f"server-side copy: sent {sent} bytes of {size} ({sent / size:.0%})")
    assert sent < 0.4 * size, f"uploaded {sent} bytes of {size}: no server-side copy"
    assert proxy.served >= size  # the premise: the source was read (and hashed) whole
    fetched = tmp_path / "fetched.weights.h5"
    s3.invalidate_cache()
    s3.get_file(f"{s3.bucket}/o/one.weights.h5", str(fetched))
    assert fetched.stat().st_size == local.stat().st_size
    a, b, src = _tensors(fetched), _tensors(local), _tensors(big)
    assert a.keys() == b.keys() == src.keys()
    for name in a:  # the oracle: the same command on the local file, and numpy
        np.testing.assert_array_equal(a[name], b[name])
    np.testing.assert_array_equal(a["layers/dense_2/vars/0"], src["layers/dense_2/vars/0"] * 0.5)
    assert run("verify", "--no-load", fetched).code == 0


def test_a_source_changed_before_the_upload_is_not_copied_from(s3, tmp_path: Path) -> None:
    """The parts are copied from the object that was downloaded, or not at all: a source
    replaced meanwhile makes the upload send every byte (moto ignores CopySourceIfMatch,
    so this exercises weightcli's own check)."""
    from weightcli.stores.s3parts import MIN_PART

    data = np.random.default_rng(1).bytes(4 * MIN_PART)
    s3.pipe(f"{s3.bucket}/c/src.bin", data)
    remote.forget()
    staged = remote.stage(remote.as_path(_url(s3, "c/src.bin")))
    try:
        out = tmp_path / "out.bin"
        out.write_bytes(data[:-10] + b"0123456789")  # all parts but the last unchanged
        s3.pipe(f"{s3.bucket}/c/src.bin", b"x" * len(data))  # the source is replaced
        remote.upload(out, remote.as_path(_url(s3, "c/out.bin")), overwrite=False)
        s3.invalidate_cache()
        assert s3.cat(f"{s3.bucket}/c/out.bin") == out.read_bytes()
        # and unchanged, the same upload copies: the object is the same
        s3.pipe(f"{s3.bucket}/c/src.bin", data)
        remote.forget()
        remote.forget_origins(staged.parent)
        staged2 = remote.stage(remote.as_path(_url(s3, "c/src.bin")))
        from weightcli.stores import s3parts

        origin = remote._origins[str(staged2)]
        parts = s3parts.plan(out, origin.local)
        assert [k for k, _, _ in parts] == ["copy", "put"]  # the premise
        remote.upload(out, remote.as_path(_url(s3, "c/out2.bin")), overwrite=False)
        assert s3.cat(f"{s3.bucket}/c/out2.bin") == out.read_bytes()
        import shutil

        shutil.rmtree(staged2.parent)
    finally:
        import shutil

        shutil.rmtree(staged.parent, ignore_errors=True)
        remote.forget_origins(staged.parent)


@pytest.mark.parametrize("seed", range(40))
def test_upload_parts_follow_s3_rules_and_copy_only_equal_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """The part plan, on random files with random edits (sizes scaled down: a grain of
    16 bytes, parts of 80 to 160): parts tile the file, each but the last is big
    enough, sent ones are bounded, and a copied part is byte-equal to the source."""
    from weightcli.stores import s3parts

    monkeypatch.setattr(s3parts, "GRAIN", 16)
    monkeypatch.setattr(s3parts, "MIN_PART", 80)
    monkeypatch.setattr(s3parts, "PART", 160)
    monkeypatch.setattr(s3parts, "MAX_COPY", 1000)
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, int(rng.integers(1, 4000)), dtype=np.uint8)
    new = src.copy()
    for _ in range(int(rng.integers(0, 8))):
        at = int(rng.integers(0, len(new)))
        new[at : at + int(rng.integers(1, 300))] ^= 0xFF
    if rng.random() < 0.3:  # the output grew (an attribute appended) or shrank
        new = np.concatenate([new, rng.integers(0, 256, 100, dtype=np.uint8)])
    elif rng.random() < 0.3:
        new = new[: len(new) // 2]
    (tmp_path / "src").write_bytes(src.tobytes())
    (tmp_path / "new").write_bytes(new.tobytes())
    parts = s3parts.plan(tmp_path / "new", tmp_path / "src")
    assert parts[0][1] == 0 and parts[-1][2] == len(new)
    for (_, _, end), (_, start, _) in zip(parts, parts[1:], strict=False):
        assert end == start
    for _, start, end in parts[:-1]:
        assert end - start >= 80
    for kind, start, end in parts:
        assert end > start
        if kind == "put":
            assert end - start <= 160
        else:
            assert end - start <= 1000
            assert np.array_equal(new[start:end], src[start:end])


def test_each_output_file_is_compared_with_its_own_source_file(s3) -> None:
    """A SavedModel's variables are compared with the downloaded variables, a
    checkpoint's index with the index: the file whose name ends the same."""
    import shutil

    remote.forget()
    staged = remote.stage(remote.as_path(_url(s3, "m/mlp_export")))
    ckpt = remote.stage(remote.as_path(_url(s3, "m/mlp_ckpt/ckpt")))
    try:
        for rel in ("variables/variables.data-00000-of-00001", "saved_model.pb"):
            origin = remote._origin_for(rel, "s3")
            assert origin is not None and origin.local == staged / rel
            assert origin.key.endswith(f"mlp_export/{rel}") and origin.etag
        shutil.rmtree(staged.parent)  # alone, ".index" names the checkpoint's
        remote.forget_origins(staged.parent)
        origin = remote._origin_for("new.index", "s3")
        assert origin is not None and origin.local.name == "ckpt.index"
        assert remote._origin_for("saved_model.pb", "memory") is None
    finally:
        for folder in (staged.parent, ckpt.parent):
            shutil.rmtree(folder, ignore_errors=True)
            remote.forget_origins(folder)
    assert remote._origin_for("saved_model.pb", "s3") is None


def test_a_replaced_remote_folder_keeps_no_old_objects(s3, tmp_path: Path) -> None:
    out = remote.as_path(_url(s3, "f/model"))
    first = tmp_path / "first"
    (first / "variables").mkdir(parents=True)
    for name in ("saved_model.pb", "variables/variables.index", "variables/old.data"):
        (first / name).write_bytes(name.encode())
    remote.upload(first, out, overwrite=False)
    second = tmp_path / "second"
    (second / "variables").mkdir(parents=True)
    for name in ("saved_model.pb", "variables/variables.index"):
        (second / name).write_bytes(b"new " + name.encode())
    remote.upload(second, out, overwrite=True)
    s3.invalidate_cache()
    keys = sorted(k.split("/f/model/", 1)[1] for k in s3.find(f"{s3.bucket}/f/model"))
    assert keys == ["saved_model.pb", "variables/variables.index"]
    assert s3.cat(f"{s3.bucket}/f/model/saved_model.pb") == b"new saved_model.pb"
    # the file that makes a folder a model goes up last
    assert (
        sorted(["saved_model.pb", "variables/v.index", "fingerprint.pb"], key=remote._upload_order)[
            -1
        ]
        == "saved_model.pb"
    )


def test_verify_checks_a_remote_archives_crc(s3, tmp_path: Path) -> None:
    """Opening a remote .keras reads its central directory and ranges only; verify, whose
    job is integrity, fetches the weights member whole and checks its CRC, as opening a
    local archive does."""
    import zipfile

    bad = tmp_path / "flipped.keras"
    bad.write_bytes((SAMPLES / "mlp.keras").read_bytes())
    with zipfile.ZipFile(bad) as zf:
        info = zf.getinfo("model.weights.h5")
    at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2
    data = bytearray(bad.read_bytes())
    data[at] ^= 0x01
    bad.write_bytes(bytes(data))
    local = run("verify", "--no-load", bad, "--json")
    s3.put_file(str(bad), f"{s3.bucket}/m/flipped.keras")
    url = _url(s3, "m/flipped.keras")
    assert run("inspect", url, "--no-stats").code == 0  # metadata only: not fetched
    res = run("verify", "--no-load", url, "--json")
    # Damage that verify finds is a failed check (exit 1), the same for both.
    assert res.code == 1 and local.code == 1
    (check,) = res.json()["checks"]
    (local_check,) = local.json()["checks"]
    assert check["name"] == "readable" and check["status"] == "FAIL"
    assert "CRC" in check["detail"] and url in check["detail"]
    assert check["detail"].replace(url, "X") == local_check["detail"].replace(str(bad), "X")


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
    from conftest import moto_server

    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as endpoint:  # checks keys
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        remote.forget()
        line = _one_line_exit_2(run("inspect", _url(s3, "m/mlp_keras3.h5")))
        assert "denied" in line.lower() or "access key" in line.lower(), line


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


def test_custom_objects_code_is_never_run_from_a_url() -> None:
    for cmd in (
        ["verify", SAMPLES / "mlp.keras"],
        ["scale", SAMPLES / "mlp.keras", "--by-activation", "--calibration", "x.npy"],
    ):
        res = run(*cmd, "--custom-objects", "s3://bucket/layers.py")
        assert "local file" in _one_line_exit_2(res)


# -- Google Cloud Storage (gs://), against an emulator -------------------------------------


@pytest.mark.parametrize("name", ["mlp_keras3.h5", "mlp.keras", "mlp_export"])
def test_gs_urls_read_transform_and_write(gcs, tmp_path: Path, name: str) -> None:
    fs, prefix = gcs
    url = f"gs://{prefix}/{name}"
    here = run("inspect", SAMPLES / name, "--json").json()
    there = run("inspect", url, "--json")
    assert there.code == 0, there.err
    assert there.json()["tensors"] == here["tensors"] and there.json()["bytes_fetched"] > 0
    assert run("diff", url, SAMPLES / name).code == 0
    expect = tmp_path / name
    assert run("scale", SAMPLES / name, "0.5", "-o", expect).code == 0
    out = f"gs://{prefix}/out/{name}"
    got = run("scale", url, "0.5", "-o", out)
    assert got.code == 0, got.err
    assert run("diff", out, expect).code == 0  # the oracle: the same command on disk
    assert run("diff", out, SAMPLES / name).code == 1
    assert run("scale", url, "0.5", "-o", out).code == 2  # exists
    fs.invalidate_cache()
    assert fs.exists(f"{prefix}/out/{name}")


def test_gs_missing_object_is_one_line(gcs) -> None:
    _, prefix = gcs
    assert "no such" in _one_line_exit_2(run("inspect", f"gs://{prefix}/nothing.h5"))


def test_verify_details_name_remote_models_as_given(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    """A framework message naming a downloaded copy (Keras's errors quote the path it
    was given) is reported with the URL the user gave."""
    from weightcli.commands import verify as verify_cmd
    from weightcli.results import Check, CheckStatus

    seen = []

    def child(fn, request, path):
        seen.append((path, request.reference))
        return [
            Check("loads", CheckStatus.FAIL, f"OSError: cannot open {path} or {request.reference}")
        ]

    monkeypatch.setattr(verify_cmd, "run_in_child", child)
    model, ref = _url(s3, "m/mlp.keras"), _url(s3, "m/mlp_keras3.h5")
    res = run("verify", model, "--reference", ref, "--json")
    ((copy, ref_copy),) = seen
    assert not remote.is_url(copy) and not remote.is_url(ref_copy)  # the premise: copies
    detail = next(c["detail"] for c in res.json()["checks"] if c["name"] == "loads")
    assert detail == f"OSError: cannot open {model} or {ref}"


def test_a_refused_server_side_copy_falls_back_to_sending_every_byte(
    s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that refuses UploadPartCopy (an encrypted source, a bucket policy): the
    output is uploaded whole instead, and is right."""
    big = _big_h5(tmp_path / "r.weights.h5", 24)
    s3.put_file(str(big), f"{s3.bucket}/big/r.weights.h5")
    calls = []
    real = type(s3).call_s3

    def refuse(self, method, *args, **kwargs):
        calls.append(method)
        if method == "upload_part_copy":
            raise PermissionError("AccessDenied: copy refused")
        return real(self, method, *args, **kwargs)

    monkeypatch.setattr(type(s3), "call_s3", refuse)
    remote.forget()
    res = run("scale", _url(s3, "big/r.weights.h5"), "0.5", "-s", "dense_0/kernel",
              "-o", _url(s3, "o/r.weights.h5"))  # fmt: skip
    assert res.code == 0, res.err
    assert "upload_part_copy" in calls and "abort_multipart_upload" in calls  # the premise
    monkeypatch.setattr(type(s3), "call_s3", real)
    local = tmp_path / "local.weights.h5"
    assert run("scale", big, "0.5", "-s", "dense_0/kernel", "-o", local).code == 0
    fetched = tmp_path / "fetched.weights.h5"
    s3.invalidate_cache()
    s3.get_file(f"{s3.bucket}/o/r.weights.h5", str(fetched))
    a, b = _tensors(fetched), _tensors(local)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_a_staged_download_left_by_an_interrupt_is_removed_at_exit(tmp_path: Path) -> None:
    """A downloaded copy whose owner never ran (an interrupt right after the download):
    the process removes it when it ends."""
    code = (
        "import fsspec, sys\n"
        "from weightcli.stores import remote\n"
        "fsspec.filesystem('memory').pipe('/b/x.bin', b'abc')\n"
        "staged = remote.stage(remote.as_path('memory://b/x.bin'))\n"
        "print(staged.read_bytes().decode(), flush=True)\n"
        "raise KeyboardInterrupt\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert res.stdout.strip() == "abc"  # the premise: it was downloaded into TMPDIR
    assert "KeyboardInterrupt" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_no_collection_runs_while_a_range_is_fetched(
    memfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """h5py reads a remote file holding its global lock while fsspec's IO thread fetches;
    a collection on that thread freeing an h5py object would wait for that lock: a
    deadlock (seen in a batch worker). So no collection runs during a fetch, also when
    fetches overlap, and collection is back on after."""
    import gc

    memfs.pipe("/b/x.bin", bytes(range(256)) * 1024)
    fs = remote.as_path("memory://b/x.bin").fs
    seen: list[bool] = []
    real = type(fs).cat_file
    inner = threading.Event()

    def cat_file(self, path, start=None, end=None, **kw):
        seen.append(gc.isenabled())
        if not inner.is_set():  # a second fetch while this one runs (another thread)
            inner.set()
            t = threading.Thread(
                target=lambda: remote.open_range(remote.as_path("memory://b/x.bin")).pread(
                    1 << 18, 0
                )
            )
            t.start()
            t.join()
        return real(self, path, start=start, end=end, **kw)

    monkeypatch.setattr(type(fs), "cat_file", cat_file)
    assert gc.isenabled()  # the premise
    f = remote.open_range(remote.as_path("memory://b/x.bin"))
    assert f.pread(1 << 18, 0) == (bytes(range(256)) * 1024)[: 1 << 18]
    assert seen == [False, False] and gc.isenabled()


def test_an_endpoint_that_never_answers_is_given_up(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that accepts connections and never answers: each request gives up (the
    defaults are bounded; here shortened to 0.5 s and one attempt), the run ends with
    one line, exit 2."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # accepted, never answered
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
        monkeypatch.setenv(
            remote.OPTIONS_ENV,
            '{"config_kwargs": {"read_timeout": 0.5, "retries": {"max_attempts": 1}}}',
        )
        remote.forget()
        options = remote.filesystem("s3").config_kwargs  # the defaults kept what was not given
        assert options["read_timeout"] == 0.5 and options["retries"] == {"max_attempts": 1}
        assert options["connect_timeout"] == remote.S3_CONNECT_TIMEOUT
        started = time.monotonic()
        _one_line_exit_2(run("inspect", _url(s3, "m/mlp_keras3.h5")))
        assert time.monotonic() - started < 30
    finally:
        stop.set()
        thread.join()
        for c in held:
            c.close()
        listener.close()
        remote.forget()


def test_messages_name_a_staged_copy_by_its_url(s3) -> None:
    """A message about a downloaded copy names the model as the user did (its URL)."""
    from weightcli.stores import temps

    url = _url(s3, "m/mlp_keras3.h5")
    staged = remote.stage(remote.as_path(url))
    try:
        assert remote.as_urls(f"{staged}: cannot read dense/kernel") == (
            f"{url}: cannot read dense/kernel"
        )
        assert str(staged.parent) not in remote.as_urls(f"see {staged}")
    finally:
        temps.remove(staged.parent)
        remote.forget_origins(staged.parent)


def test_a_timeout_that_cannot_hold_on_a_remote_pool_is_refused(memfs) -> None:
    """Models in object storage on several jobs run in a pool of spawned workers, which
    cannot stop one model: --timeout there is refused, not ignored (-j 1 holds it)."""
    res = run("--timeout", "30", "inspect", "memory://mem/a.h5", "memory://mem/sm", "-j", "2")
    assert res.code == 2 and "--timeout" in res.err and "-j 1" in res.err
