"""Every command the README shows runs as written: its shell blocks (but the `make`
lines, which CI itself runs) and its Python example, in a folder laid out the way they
name things (checkpoints/, models/, exports/, sources/), built from the samples."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, SAMPLES

README = (ROOT / "README.md").read_text()
BLOCKS = [
    body
    for lang, body in re.findall(r"```(\w*)\n(.*?)```", README, re.S)
    if lang in ("sh", "bash") and re.search(r"^\s*weightcli |\bdo weightcli ", body, re.M)
]
PYTHON = [
    body for lang, body in re.findall(r"```(\w*)\n(.*?)```", README, re.S) if lang == "python"
]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "sample_models").symlink_to(SAMPLES)
    for folder, names in {
        "checkpoints": ["mlp_nan.h5", "mlp.keras", "mlp_export"],
        "models": ["mlp.keras", "cnn_keras3.h5", "mlp_export"],
        "exports": ["mlp_export"],
    }.items():
        (tmp_path / folder).mkdir()
        for name in names:
            src = SAMPLES / name
            if src.is_dir():
                shutil.copytree(src, tmp_path / folder / name)
            else:
                shutil.copyfile(src, tmp_path / folder / name)
    (tmp_path / "sources").mkdir()
    shutil.copyfile(SAMPLES / "mlp.keras", tmp_path / "sources" / "mlp_export.keras")
    return tmp_path


def sh(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_readme_shows_what_this_test_runs() -> None:
    assert len(BLOCKS) >= 2 and PYTHON  # premise: the blocks were found


def test_by_activation_block(workspace: Path) -> None:
    block = next(b for b in BLOCKS if "--by-activation" in b)
    res = sh(block, workspace)
    assert res.returncode == 0, res.stderr
    assert (workspace / "calibrated.keras").is_file()


def test_ci_recipes_block(workspace: Path) -> None:
    block = next(b for b in BLOCKS if "checkpoints/" in b)
    res = sh(block, workspace)
    assert res.returncode == 0, res.stderr  # the last command: verify -r, all sound
    # The NaN check names the one checkpoint with NaN planted in it.
    assert str(Path("checkpoints") / "mlp_nan.h5") in res.stdout
    # quantized/ did not exist: it was created, mirroring models/.
    assert sorted(p.name for p in (workspace / "quantized").iterdir()) == [
        "cnn_keras3.h5",
        "mlp.keras",
        "mlp_export",
    ]
    assert "OK:" in res.stdout and "FAILED" not in res.stdout


def test_python_api_block(workspace: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-c", PYTHON[0]],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "DIFFERENT" in res.stdout
    again = subprocess.run(  # writes into a fresh folder: a second run works too
        [sys.executable, "-c", PYTHON[0]], cwd=workspace, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert not (workspace / "half.keras").exists()


def test_transplant_block(workspace: Path) -> None:
    """The README's transplant examples, with the two models they name built first."""
    from helpers import keras_quiet

    keras = keras_quiet()
    for name, layers in (
        (
            "new_model.keras",
            [("backbone_1", 32, "relu"), ("backbone_2", 16, "relu"), ("new_head", 5, None)],
        ),
        ("rebuilt.keras", [("a", 32, "relu"), ("b", 16, "relu"), ("c", 3, None)]),
    ):
        model = keras.Sequential(
            [keras.Input((20,))]
            + [keras.layers.Dense(n, activation=act, name=lname) for lname, n, act in layers]
        )
        model.save(workspace / name)
    block = next(b for b in BLOCKS if "transplant" in b)
    res = sh(block, workspace)
    assert res.returncode == 0, res.stderr
    assert (workspace / "ready.keras").is_file() and (workspace / "ported.keras").is_file()


def test_every_shell_block_is_run() -> None:
    """Premise of this file: each README block with a weightcli command is one of those run."""
    keys = (
        "--by-activation",
        "checkpoints/",
        "transplant",
        "merge",
        "weightcli dump",
        "s3://",
        "--source",
        "--layout torch",
        "weightcli prune",
        "weightcli cluster",
        "merge --config",
        "weightcli lora",
        "weightcli migrate",
        "weightcli report",
        "--to tflite",
    )
    assert all(any(k in b for k in keys) for b in BLOCKS), [b[:60] for b in BLOCKS]
    for k in (
        "merge --config",
        "weightcli lora",
        "weightcli migrate",
        "weightcli report",
        "--to tflite",
    ):
        assert sum(k in b for b in BLOCKS) == 1, k


@pytest.mark.parametrize(
    "key,made",
    [
        ("merge --config", ["dare.keras"]),
        ("weightcli lora", ["merged.keras", "back.lora.h5"]),
        ("weightcli migrate", ["mobile_keras3.h5"]),
        ("weightcli report", ["model.html", "pruned.html", "change.html", "nan.html"]),
        ("--to tflite", ["cnn.tflite", "cnn_half.tflite"]),
    ],
)
def test_block_runs(workspace: Path, key: str, made: list[str]) -> None:
    (block,) = [b for b in BLOCKS if key in b]
    res = sh(block, workspace)
    assert res.returncode == 0, res.stderr
    for name in made:
        assert (workspace / name).exists(), name
    if key == "weightcli migrate":
        assert "loads in: Keras 3 no (DepthwiseConv2D groups" in res.stdout
    if key == "weightcli report":
        assert "Distribution" in res.stdout and "▁" in res.stdout
        assert (workspace / "pruned.html").read_text() == (workspace / "change.html").read_text()


def test_merge_block(workspace: Path) -> None:
    block = next(b for b in BLOCKS if "weightcli merge" in b and "--config" not in b)
    res = sh(block, workspace)
    assert res.returncode == 0, res.stderr
    assert (workspace / "soup.keras").is_file() and (workspace / "ta.keras").is_file()


def test_edits_block(workspace: Path) -> None:
    block = next(b for b in BLOCKS if "weightcli dump" in b)
    res = sh(block, workspace)
    assert res.returncode == 0, res.stderr
    for name in (
        "zero_bias.keras",
        "mlp_weights.npz",
        "same.keras",
        "fresh_head.keras",
        "frozen.keras",
    ):
        assert (workspace / name).exists(), name


def test_object_storage_block(
    workspace: Path, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fleet job, against a local S3 server holding the sample models and a local
    Dask cluster whose workers have the credentials; the block runs as written (the
    scheduler is $DASK_SCHEDULER)."""
    import s3fs
    from distributed import LocalCluster

    block = next(b for b in BLOCKS if "s3://" in b)
    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # for this process, and the workers started below
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    if fs.exists("my-models"):
        fs.rm("my-models", recursive=True)
    fs.mkdir("my-models")
    for name in ("mlp.keras", "mlp_keras3.h5"):
        fs.put_file(str(SAMPLES / name), f"my-models/models/{name}")
    fs.put(str(SAMPLES / "mlp_export"), "my-models/models/mlp_export", recursive=True)
    with LocalCluster(
        n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        monkeypatch.setenv("DASK_SCHEDULER", cluster.scheduler_address)
        res = sh(block, workspace)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert lines[-1]["summary"]["models"] == 3 and lines[-1]["summary"]["exit_code"] == 0
    meta = json.loads((workspace / "meta.json").read_text())
    assert 0 < meta["bytes_fetched"] <= (SAMPLES / "mlp.keras").stat().st_size  # once at most
    fs.invalidate_cache()
    assert fs.exists("my-models/fixed/mlp.keras")


def test_digests_block(workspace: Path) -> None:
    block = next(b for b in BLOCKS if "--source" in b)
    res = sh("set -e\n" + block, workspace)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert all(len(t["blake3"]) == 64 for t in doc["tensors"])
    assert "PASS" in res.stdout  # the source check


def test_torch_layout_block(workspace: Path) -> None:
    block = next(b for b in BLOCKS if "--layout torch" in b)
    res = sh("set -e\n" + block, workspace)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sh("weightcli diff back.keras sample_models/mlp.keras", workspace).returncode == 0


def test_prune_block(workspace: Path) -> None:
    block = next(b for b in BLOCKS if "weightcli prune" in b and "--report-html" not in b)
    res = sh("set -e\n" + block, workspace)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("sparse.keras", "sparse_global.keras", "sparse24.keras"):
        assert (workspace / name).is_file(), name


def test_cluster_block(workspace: Path) -> None:
    block = next(b for b in BLOCKS if "weightcli cluster" in b)
    res = sh("set -e\n" + block, workspace)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (workspace / "clustered.keras").is_file() and (workspace / "c4.keras").is_file()
