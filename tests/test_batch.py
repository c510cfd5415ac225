"""Batch runs over model directories: discovery, parallel workers, mirrored outputs, one report."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import SAMPLES, run


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    (root / "keras" / "deep").mkdir(parents=True)
    (root / "tf").mkdir()
    (root / "misc").mkdir()
    shutil.copyfile(SAMPLES / "mlp_keras3.h5", root / "keras" / "mlp.h5")
    shutil.copyfile(SAMPLES / "cnn.keras", root / "keras" / "deep" / "cnn.keras")
    shutil.copyfile(SAMPLES / "mlp.weights.h5", root / "keras" / "deep" / "mlp.weights.h5")
    shutil.copytree(SAMPLES / "mlp_export", root / "tf" / "export")
    shutil.copytree(SAMPLES / "mlp_ckpt", root / "tf" / "ckpt")
    (root / "misc" / "broken.h5").write_bytes((SAMPLES / "mlp_tfkeras.h5").read_bytes()[:3000])
    (root / "misc" / "notes.txt").write_text("not a model\n")
    return root


EXPECTED = [
    "keras/deep/cnn.keras",
    "keras/deep/mlp.weights.h5",
    "keras/mlp.h5",
    "misc/broken.h5",
    "tf/ckpt/ckpt",
    "tf/export",
]


def rel(doc_path: str, root: Path) -> str:
    return str(Path(doc_path).relative_to(root))


def strip_times(docs: list[dict]) -> list[dict]:
    out = []
    for d in docs:
        d = dict(d)
        d.pop("elapsed_s", None)
        if "summary" in d:
            d["summary"] = {k: v for k, v in d["summary"].items() if k != "seconds"}
        out.append(d)
    return out


def test_discovery_and_outcomes(tree: Path) -> None:
    res = run("inspect", "-r", tree, "--json", "--no-stats", "-j", "1")
    assert res.code == 2  # the worst outcome: the broken file
    *docs, summary = res.lines()
    assert [rel(d["path"], tree) for d in docs] == EXPECTED
    broken = docs[EXPECTED.index("misc/broken.h5")]
    assert broken["exit_code"] == 2 and "broken.h5" in broken["error"]
    assert all(d["exit_code"] == 0 for d in docs if d is not broken)
    assert summary["summary"] | {"seconds": 0} == {
        "models": 6,
        "ok": 5,
        "failed": 0,
        "errors": 1,
        "internal_errors": 0,
        "exit_code": 2,
        "seconds": 0,
    }
    assert "broken.h5" in res.err


def test_jobs_1_and_2_identical(tree: Path) -> None:
    one = run("inspect", "-r", tree, "--json", "-j", "1")
    two = run("inspect", "-r", tree, "--json", "-j", "2")
    assert one.code == two.code == 2
    assert strip_times(one.lines()) == strip_times(two.lines())
    v1 = run("verify", "-r", tree, "--no-load", "--json", "-j", "1")
    v2 = run("verify", "-r", tree, "--no-load", "--json", "-j", "2")
    assert v1.code == v2.code == 1  # the damaged model: a failed "readable" check
    assert strip_times(v1.lines()) == strip_times(v2.lines())


def test_fail_on_nonfinite_worst_code(tmp_path: Path) -> None:
    res = run(
        "inspect",
        SAMPLES / "mlp.keras",
        SAMPLES / "mlp_nan.h5",
        "--fail-on-nonfinite",
        "--json",
        "-j",
        "2",
    )
    assert res.code == 1
    *docs, summary = res.lines()
    assert [d["exit_code"] for d in docs] == [0, 1]
    assert summary["summary"]["failed"] == 1


def test_output_dir_mirrors_tree_and_refuses_overwrite(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    res = run("scale", "-r", tree, "0.5", "--output-dir", out, "--json", "-j", "2")
    assert res.code == 2
    *docs, _ = res.lines()
    ok = [rel(d["path"], tree) for d in docs if d["exit_code"] == 0]
    assert ok == [e for e in EXPECTED if e != "misc/broken.h5"]
    for r in ok:
        target = out / r
        assert target.exists() or target.with_name(target.name + ".index").exists(), r
    assert (out / "tf" / "export" / "saved_model.pb").is_file()
    assert (out / "tf" / "export" / "assets.extra" / "weightcli_history.json").is_file()
    assert (out / "tf" / "ckpt" / "ckpt.index").is_file()
    assert not (out / "misc" / "notes.txt").exists()
    # The scaled copies really are scaled: diff each against its source.
    assert run("diff", out / "keras" / "mlp.h5", tree / "keras" / "mlp.h5").code == 1
    doc = run("diff", out / "tf" / "export", tree / "tf" / "export", "--json").json()
    assert all(t["status"] == "differs" for t in doc["tensors"])
    # A second run without --force refuses every existing output; with --force it works.
    again = run("scale", "-r", tree, "0.5", "--output-dir", out, "--json")
    *docs2, summary2 = again.lines()
    assert again.code == 2 and summary2["summary"]["errors"] == 6
    assert all("already exists" in d["error"] for d in docs2 if not d["path"].endswith("broken.h5"))
    forced = run("scale", "-r", tree, "0.5", "--output-dir", out, "--force", "--json")
    assert forced.lines()[-1]["summary"]["ok"] == 5


def test_batch_usage_errors(tree: Path, tmp_path: Path) -> None:
    res = run(
        "scale",
        tree / "keras" / "mlp.h5",
        tree / "keras" / "deep" / "cnn.keras",
        "2",
        "-o",
        tmp_path / "x.h5",
    )
    assert res.code == 2 and "--output-dir" in res.err
    res = run("scale", tree / "keras" / "mlp.h5", tree / "keras" / "deep" / "cnn.keras", "2")
    assert res.code == 2 and "--output-dir" in res.err
    # A missing output folder is created (the broken model in the tree still fails).
    res = run("clip", "-r", tree, "--abs-max", "1", "--output-dir", tmp_path / "missing" / "x")
    assert (tmp_path / "missing" / "x" / "keras" / "mlp.h5").is_file()
    (tmp_path / "file").write_text("")
    res = run("clip", "-r", tree, "--abs-max", "1", "--output-dir", tmp_path / "file")
    assert res.code == 2 and "--output-dir is not a directory" in res.err
    res = run("inspect", "-r", tmp_path / "empty_dir_that_does_not_exist")
    assert res.code == 2


def test_dry_run_needs_no_output_dir(tree: Path) -> None:
    res = run("quantize", "-r", tree / "keras", "--dry-run", "--json", "-j", "2")
    assert res.code == 0
    *docs, summary = res.lines()
    assert summary["summary"]["ok"] == 3 and all(d["dry_run"] for d in docs)


def test_table_output_and_summary(tree: Path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # long temporary paths on one line each
    res = run("verify", "-r", tree, "--no-load", "--no-progress")
    assert res.code == 1  # the damaged model: a failed "readable" check, not an error
    assert "6 models: 5 ok, 1 check failed, 0 error" in res.out
    assert "broken.h5" in res.out


def test_progress_flag(tree: Path) -> None:
    quiet = run("inspect", "-r", tree / "keras", "--no-stats")
    assert quiet.err == ""  # not a terminal: no progress bar
    loud = run("inspect", "-r", tree / "keras", "--no-stats", "--progress")
    assert loud.code == 0


def test_scale_factor_parsing(tmp_path: Path) -> None:
    res = run("scale", SAMPLES / "mlp_keras3.h5", "abc", "-o", tmp_path / "o.h5")
    assert res.code == 2 and "FACTOR must be a number" in res.err


def test_workers_end_when_the_main_process_is_killed() -> None:
    """A batch's main process killed outright (a cancelled CI job) leaves no workers behind."""
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import os, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from weightcli.child import end_with_parent\n"
        "with ProcessPoolExecutor(2, initializer=end_with_parent, initargs=(os.getpid(),)) as p:\n"
        "    list(p.map(abs, range(4)))\n"
        "    print(*p._processes, flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    workers = [int(w) for w in proc.stdout.readline().split()]
    assert len(workers) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    alive = workers
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [w for w in workers if _running(w)]
    assert not alive, f"workers {alive} outlived the main process"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_bug_exits_3_and_counts_as_an_internal_error(tmp_path: Path, monkeypatch) -> None:
    """A bug (not a user error) ends with exit 3, in a batch too, counted apart."""
    from weightcli.commands import inspect as inspect_cmd

    real = inspect_cmd.run

    def buggy(request, path):
        if "b" in Path(path).name:
            raise KeyError("a bug")
        return real(request, path)

    monkeypatch.setattr(inspect_cmd, "run", buggy)
    for name in ("a.h5", "b.h5"):
        shutil.copyfile(SAMPLES / "mlp_keras3.h5", tmp_path / name)
    res = run("inspect", tmp_path / "a.h5", tmp_path / "b.h5", "--json", "-j", "1")
    assert res.code == 3, res.err
    summary = res.lines()[-1]["summary"]
    assert summary["internal_errors"] == 1 and summary["ok"] == 1 and summary["exit_code"] == 3
    res = run("inspect", tmp_path / "b.h5")
    assert res.code == 3 and "please report" in res.err
