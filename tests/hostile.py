"""A corpus of hostile inputs, made from the samples, and the contract every command
keeps on each: one line on stderr, exit 2, no traceback, the input unchanged, no output,
no temporary file left (beside the output or in $TMPDIR), bounded memory.

    python tests/hostile.py make DIR     # write the corpus
    python tests/hostile.py run DIR      # run every command on every case; JSON report

``run`` runs each command in its own process (forked from one that imported weightcli
once), two at a time, and reports the largest resident size any of them reached
(``getrusage`` of its children).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"


def _copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)
    return dst


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _rezip(
    src: Path, dst: Path, replace: dict[str, bytes], method: int = zipfile.ZIP_STORED
) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = replace.get(info.filename, zin.read(info.filename))
            zout.writestr(info.filename, data, compress_type=method)


def _bundle(dst: Path, edit) -> Path:
    """A copy of the sample TF checkpoint whose first model tensor's index entry is edited."""
    from weightcli.stores import tfproto, tftable

    dst.mkdir()
    src = SAMPLES / "mlp_ckpt"
    shutil.copyfile(src / "ckpt.data-00000-of-00001", dst / "ckpt.data-00000-of-00001")
    rows = tftable.read_table((src / "ckpt.index").read_bytes(), "ckpt.index")
    out = []
    done = False
    for key, value in rows:
        if key and not done and b"_trainable_variables/0/" in key:
            proto = tfproto.BundleEntryProto()
            proto.ParseFromString(value)
            edit(proto)
            value = proto.SerializeToString(deterministic=True)
            done = True
        out.append((key, value))
    (dst / "ckpt.index").write_bytes(tftable.write_table(out))
    return dst / "ckpt"


def make(folder: Path) -> list[str]:
    """Write the corpus into ``folder``; returns the case paths (relative)."""
    folder.mkdir(parents=True, exist_ok=True)
    h5 = SAMPLES / "mlp_keras3.h5"
    cases: list[Path] = []

    def case(name: str) -> Path:
        p = folder / name
        cases.append(p)
        return p

    # HDF5
    data = h5.read_bytes()
    case("truncated.h5").write_bytes(data[:3000])
    case("empty.h5").write_bytes(b"")
    p = _copy(h5, case("superblock_flipped.h5"))
    _flip(p, 9)
    p = _copy(h5, case("tail_flipped.h5"))
    _flip(p, len(data) - 100)
    p = _copy(h5, case("null_dataspace.h5"))
    with h5py.File(p, "r+") as f:
        f.create_dataset("model_weights/dense_1/null", shape=None, dtype="f4")
    p = _copy(h5, case("int_layer_names.h5"))
    with h5py.File(p, "r+") as f:
        f["model_weights"].attrs["layer_names"] = np.arange(3)
    p = _copy(h5, case("deep_config.h5"))
    with h5py.File(p, "r+") as f:
        f.attrs["model_config"] = "[" * 100_000 + "]" * 100_000
    p = _copy(h5, case("history_wrong_type.h5"))
    with h5py.File(p, "r+") as f:
        f.attrs["weightcli_history"] = 42
    for name, history in (
        ("history_garbage.h5", '[1, "x", null]'),
        ("history_types.h5", '[{"changed": 5, "source": null, "note": {"a": 1}, "time": 7}]'),
    ):
        p = _copy(h5, case(name))
        with h5py.File(p, "r+") as f:
            f.attrs["weightcli_history"] = history
    with h5py.File(case("shape_bomb.h5"), "w") as f:
        f.create_dataset("dense/kernel", shape=(1 << 20, 1 << 20), dtype="f4", chunks=(64, 64))
    # Keras archives
    keras = SAMPLES / "mlp.keras"
    for name, body in (("config_list.keras", b"[]"), ("config_null.keras", b"null")):
        _rezip(keras, case(name), {"config.json": body})
    _rezip(keras, case("metadata_list.keras"), {"metadata.json": b"[1, 2]"})
    p = _copy(keras, case("weights_bit_flipped.keras"))
    with zipfile.ZipFile(p) as z:
        info = z.getinfo("model.weights.h5")
    _flip(p, info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2)
    p = case("unknown_method.keras")
    _rezip(keras, p, {}, method=zipfile.ZIP_DEFLATED)
    raw = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as z:
        info = z.getinfo("model.weights.h5")
    raw[info.header_offset + 8] = 99  # local header: compression method
    central = raw.rfind(b"PK\x01\x02" + bytes(4), 0)  # noqa: F841 - also the central copy:
    pos = 0
    while (pos := raw.find(b"PK\x01\x02", pos)) != -1:
        name_len = int.from_bytes(raw[pos + 28 : pos + 30], "little")
        if raw[pos + 46 : pos + 46 + name_len] == b"model.weights.h5":
            raw[pos + 10] = 99
        pos += 4
    p.write_bytes(bytes(raw))
    _rezip(
        keras,
        case("zip_bomb.keras"),
        {"model.weights.h5": bytes(64 << 20)},
        method=zipfile.ZIP_DEFLATED,
    )
    _rezip(
        keras,
        case("huge_config.keras"),
        {"config.json": b" " * (70 << 20) + b"{}"},
        method=zipfile.ZIP_DEFLATED,
    )
    p = case("deflated_flipped.keras")  # a bit flip inside a deflate stream
    _rezip(keras, p, {}, method=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(p) as z:
        info = z.getinfo("model.weights.h5")
    _flip(p, info.header_offset + 30 + len(info.filename) + info.compress_size // 2)
    _rezip(keras, case("bzip2.keras"), {}, method=zipfile.ZIP_BZIP2)
    p = _copy(keras, case("two_weights.keras"))
    with zipfile.ZipFile(keras) as zin, zipfile.ZipFile(p, "a") as zout:
        zout.writestr("model.weights.h5", zin.read("model.weights.h5"))
    # A weights map naming a shard whose name is too long for the system
    sharded = _copy(SAMPLES / "mlp_sharded", case("long_shard_name"))
    doc = json.loads((sharded / "mlp.weights.json").read_text())
    first = next(iter(doc["weight_map"]))
    doc["weight_map"][first] = ["x" * 5000 + ".weights.h5"]
    (sharded / "mlp.weights.json").write_text(json.dumps(doc))
    # TF checkpoints: one index entry lies
    _bundle(case("ckpt_huge_shape"), lambda e: _shape(e, [1 << 31, 1 << 31]))
    _bundle(case("ckpt_negative_offset"), lambda e: setattr(e, "offset", -8))
    _bundle(case("ckpt_bad_shard"), lambda e: setattr(e, "shard_id", 7))
    _bundle(case("ckpt_bad_dtype"), lambda e: setattr(e, "dtype", 99))
    _bundle(case("ckpt_size_too_small"), lambda e: setattr(e, "size", e.size - 4))
    _bundle(case("ckpt_negative_dim"), lambda e: _shape(e, [-5, 3]))
    return [str(p.relative_to(folder)) for p in cases]


def _shape(entry, dims: list[int]) -> None:
    del entry.shape.dim[:]
    for d in dims:
        entry.shape.dim.add().size = d


def _checkpoint_arg(path: Path) -> Path:
    if path.is_dir() and path.name.startswith("ckpt_"):
        return path / "ckpt"
    maps = sorted(path.glob("*.weights.json")) if path.is_dir() else []
    return maps[0] if maps else path


COMMANDS = [
    ["inspect"],
    ["inspect", "--no-stats"],
    ["scale", "{case}", "0.5", "-o", "{out}"],
    ["clip", "--abs-max", "1", "-o", "{out}"],
    ["quantize", "-o", "{out}"],
    ["diff", "{case}", str(SAMPLES / "mlp_keras3.h5")],
    ["verify", "--no-load"],
    ["dump", "-o", "{out}.npz"],
    ["export", "-o", "{out}.safetensors"],
    ["set", "{case}", "dense_1/bias=0", "-o", "{out}"],
    ["reinit", "{case}", "--initializer", "zeros", "-s", "dense_1/*", "-o", "{out}"],
    ["merge", "{case}", "{case}", "-o", "{out}"],
    ["transplant", "{case}", str(SAMPLES / "mlp_keras3.h5"), "-o", "{out}.h5"],
    ["report", "-o", "{out}.html"],
    ["migrate", "-o", "{out}.keras"],
    ["strip", "-o", "{out}.h5"],
]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def _start(args: list[str], tmpdir: Path, log: Path) -> int:
    """``weightcli ARGS`` in a forked child of this process, which has imported
    weightcli already (a fresh interpreter's start-up, about 0.2 s, times every run of
    the corpus was most of this test's time): the child runs the console entry point
    itself (``main`` ends the process with the command's exit code), its stdout and
    stderr into ``log`` files, its $TMPDIR ``tmpdir``."""
    pid = os.fork()
    if pid:
        return pid
    try:  # the child
        os.environ["TMPDIR"] = str(tmpdir)
        os.environ["COLUMNS"] = "120"
        tempfile.tempdir = None  # gettempdir() reads $TMPDIR again
        for fd, name in ((1, "stdout"), (2, "stderr")):
            out = os.open(log.with_suffix(f".{name}"), os.O_WRONLY | os.O_CREAT, 0o644)
            os.dup2(out, fd)
            os.close(out)
        from weightcli.cli import main

        main(args)
    finally:
        os._exit(70)  # main returned or raised: never the case for a finished command


def _prepare(folder: Path, case: str, command: list[str]) -> dict[str, object]:
    src = folder / case
    target = _checkpoint_arg(src)
    work = Path(tempfile.mkdtemp(prefix="hostile-"))
    out_dir, tmpdir = work / "out", work / "tmp"
    out_dir.mkdir()
    tmpdir.mkdir()
    out = out_dir / (Path(case).name if not src.is_dir() else "o")
    args = [a.format(case=target, out=out) for a in command]
    if "{case}" not in command:
        args.insert(1, str(target))
    return {"case": case, "src": src, "work": work, "out_dir": out_dir, "tmpdir": tmpdir,
            "args": args, "before": _digest(src)}  # fmt: skip


def _finish(job: dict[str, object], code: int) -> dict[str, object]:
    work, src = Path(str(job["work"])), Path(str(job["src"]))
    args = list(job["args"])  # type: ignore[call-overload]
    report = {
        "case": job["case"],
        "command": " ".join(args[:1] + args[2:]),
        "code": code,
        "stderr": (work / "log.stderr").read_text(errors="replace"),
        "unchanged": _digest(src) == job["before"],
        "left_in_out": sorted(os.listdir(Path(str(job["out_dir"])))),
        "left_in_tmp": sorted(os.listdir(Path(str(job["tmpdir"])))),
    }
    shutil.rmtree(work, ignore_errors=True)
    return report


def run(
    folder: Path, cases: list[str], at_once: int = 2, timeout: float = 120
) -> dict[str, object]:
    """Every command on every case, ``at_once`` at a time, each in its own forked
    process (started from this single-threaded one), killed after ``timeout``."""
    import resource
    import signal
    import time

    import weightcli.cli  # noqa: F401  imported once, before any fork
    import weightcli.cli.dispatch  # noqa: F401

    todo = [(c, cmd) for c in cases for cmd in COMMANDS]
    running: dict[int, tuple[dict[str, object], float]] = {}
    reports: list[dict[str, object]] = []
    while todo or running:
        while todo and len(running) < at_once:
            case, command = todo.pop(0)
            job = _prepare(folder, case, command)
            work = Path(str(job["work"]))
            pid = _start(list(job["args"]), Path(str(job["tmpdir"])), work / "log")  # type: ignore[call-overload]
            running[pid] = (job, time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for p, (_, started) in running.items():
                if time.monotonic() - started > timeout:
                    os.kill(p, signal.SIGKILL)
            time.sleep(0.002)
            continue
        job, _ = running.pop(pid)
        reports.append(_finish(job, os.waitstatus_to_exitcode(status)))
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    return {"peak_rss_mib": peak / 1024, "runs": reports}


if __name__ == "__main__":
    verb, where = sys.argv[1], Path(sys.argv[2])
    if verb == "make":
        print(json.dumps(make(where)))
    else:
        names = json.loads(sys.argv[3]) if len(sys.argv) > 3 else sorted(os.listdir(where))
        print(json.dumps(run(where, names)))
