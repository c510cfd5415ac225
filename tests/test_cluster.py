"""``--executor dask``: batch runs on a real Dask cluster (started on 127.0.0.1 by a
fixture), checked against the local executor."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import SAMPLES, run

from weightcli import cluster
from weightcli.batch import Item, Runner


def _mixed(tmp_path: Path) -> Path:
    """A directory of models of every kind, one of them damaged."""
    root = tmp_path / "models"
    (root / "sub").mkdir(parents=True)
    for name in ("mlp_keras3.h5", "mlp.keras", "cnn_tfkeras.h5"):
        shutil.copyfile(SAMPLES / name, root / name)
    shutil.copytree(SAMPLES / "mlp_export", root / "sub" / "mlp_export")
    shutil.copytree(SAMPLES / "mlp_ckpt", root / "sub" / "ckpt")
    (root / "sub" / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    return root


def _timeless(doc: object) -> object:
    """A JSON line without its timings (the one thing allowed to differ)."""
    if isinstance(doc, dict):
        return {k: _timeless(v) for k, v in doc.items() if k not in ("elapsed", "seconds")}
    if isinstance(doc, list):
        return [_timeless(v) for v in doc]
    return doc


def test_dask_batch_gives_the_local_json_lines(tmp_path: Path, dask_scheduler: str) -> None:
    root = _mixed(tmp_path)
    for args in (["inspect", "-r", root], ["verify", "--no-load", "-r", root]):
        local = run(*args, "--json", "--executor", "local")
        remote = run(*args, "--json", "--executor", "dask", "--scheduler", dask_scheduler)
        # broken.h5: inspect refuses it (2), verify fails its "readable" check (1)
        want = 2 if args[0] == "inspect" else 1
        assert remote.code == local.code == want, (remote.err, local.err)
        lines = remote.lines()
        assert [_timeless(x) for x in lines] == [_timeless(x) for x in local.lines()]
        assert len(lines) == 7  # 6 models, then the summary: it really ran them all
        assert "broken.h5" in (remote.err if want == 2 else remote.out)


def test_a_transform_batch_on_dask_writes_every_output(tmp_path: Path, dask_scheduler: str) -> None:
    root = _mixed(tmp_path)
    (root / "sub" / "broken.h5").unlink()
    out = tmp_path / "out"
    res = run(
        "scale", "-r", root, "0.5", "--output-dir", out, "--json",
        "--executor", "dask", "--scheduler", dask_scheduler,
    )  # fmt: skip
    assert res.code == 0, res.err
    for line in res.lines()[:-1]:
        written = Path(line["output"])  # a TF checkpoint output is a prefix: its .index
        assert line["exit_code"] == 0
        assert written.exists() or written.with_name(written.name + ".index").exists()
        assert run("diff", line["output"], line["path"]).code == 1  # really scaled


def _abort_on_b(item: Item):  # a model whose run kills its worker (a native crash)
    if item.path.name == "b.h5":
        import faulthandler

        faulthandler.disable()
        os.abort()
    import weightcli

    return weightcli.inspect(item.path, stats=False)


def test_a_worker_that_dies_fails_only_its_model(tmp_path: Path, dask_scheduler: str) -> None:
    import cloudpickle
    import test_cluster

    cloudpickle.register_pickle_by_value(test_cluster)  # the workers need not import tests/
    for name in ("a.h5", "b.h5", "c.h5", "d.h5"):
        shutil.copyfile(SAMPLES / "mlp_keras3.h5", tmp_path / name)
    items = [Item(tmp_path / n) for n in ("a.h5", "b.h5", "c.h5", "d.h5")]
    runner = Runner(_abort_on_b, executor="dask", scheduler=dask_scheduler)
    outcomes = list(runner.run(items))
    assert [Path(o.path).name for o in outcomes] == ["a.h5", "b.h5", "c.h5", "d.h5"]
    assert [o.code for o in outcomes] == [0, 2, 0, 0]
    assert "Dask worker running this model died (twice)" in (outcomes[1].error or "")


def test_a_local_cluster_when_no_scheduler_is_given(tmp_path: Path) -> None:
    root = _mixed(tmp_path)
    res = run("inspect", "-r", root, "--no-stats", "--json", "--executor", "dask", "-j", "2")
    assert res.code == 2 and len(res.lines()) == 7, res.err


def test_executor_options_that_cannot_apply(
    tmp_path: Path, dask_scheduler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 1)  # nothing listens on port 9
    m = SAMPLES / "mlp_keras3.h5"
    res = run("inspect", m, "--scheduler", dask_scheduler)
    assert res.code == 2 and "--scheduler needs --executor dask" in res.err
    res = run("inspect", m, m, "--executor", "dask", "--scheduler", dask_scheduler, "-j", "2")
    assert res.code == 2 and "leave -j out" in res.err
    res = run("inspect", m, "--executor", "dask", "--scheduler", "tcp://127.0.0.1:9")
    assert res.code == 2 and "cannot reach the Dask scheduler" in res.err
    assert len(res.err.strip().splitlines()) == 1
