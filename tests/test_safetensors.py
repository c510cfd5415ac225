""".safetensors as a format (one module, stores/safetensors.py, and one registry line):
files written by the safetensors package read identically, transforms patch them in
place (the package's reader is the oracle), hostile headers give one line and exit 2."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from helpers import run
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from test_bad_input import assert_clean_error

import weightcli
from weightcli.stores import safetensors as st


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "model.dense.weight": rng.standard_normal((8, 6)).astype(np.float32),
        "model.dense.bias": rng.standard_normal(8).astype(np.float32),
        "model.emb.weight": rng.standard_normal((12, 4)).astype(np.float16),
        "model.norm.weight": rng.standard_normal(6).astype(ml_dtypes.bfloat16),
        "model.head.weight": rng.standard_normal((3, 6)).astype(np.float64),
        "model.codes": rng.integers(-128, 127, (5, 4)).astype(np.int8),
        "model.ids": rng.integers(0, 1 << 40, 7).astype(np.int64),
        "model.mask": rng.integers(0, 2, 9).astype(bool),
        "model.pixels": rng.integers(0, 255, 10).astype(np.uint8),
        "model.scalar": np.array(2.5, np.float32),
        "model.empty": np.zeros((0, 3), np.float32),
    }


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file(_tensors(), str(path), metadata={"format": "np", "origin": "test"})
    return path


def _header(path: Path) -> tuple[dict, int]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), 8 + n


def _raw(path: Path, name: str) -> bytes:
    doc, start = _header(path)
    a, b = doc[name]["data_offsets"]
    return path.read_bytes()[start + a : start + b]


def test_reads_what_the_safetensors_package_wrote(model: Path) -> None:
    doc = run("inspect", model, "--json").json()
    assert doc["format"] == "safetensors"
    assert doc["details"] == {"format": "np", "origin": "test"}
    oracle = load_file(str(model))
    by_name = {t["name"]: t for t in doc["tensors"]}
    assert set(by_name) == set(oracle)
    for name, value in oracle.items():
        t = by_name[name]
        assert tuple(t["shape"]) == value.shape
        assert t["dtype"] == value.dtype.name
        if (value.dtype.kind == "f" or value.dtype == ml_dtypes.bfloat16) and value.size:
            assert t["stats"]["max"] == pytest.approx(float(value.astype(np.float64).max()))
    # dump writes every tensor as the package reads it (bfloat16 has no .npy type)
    out = model.parent / "all.npz"
    res = run("dump", model, "-o", out, "--exclude", "model.norm.weight")
    assert res.code == 0, res.err
    with np.load(out) as dumped:
        assert set(dumped.files) == set(oracle) - {"model.norm.weight"}
        for name in dumped.files:
            value = oracle[name]
            assert dumped[name].shape == value.shape, name
            assert dumped[name].tobytes() == value.tobytes(), name


def test_scale_patches_in_place_and_keeps_every_other_byte(model: Path) -> None:
    out = model.parent / "half.safetensors"
    res = run("scale", model, "0.5", "-s", "model.dense.*", "-o", out)
    assert res.code == 0, res.err
    before, after = load_file(str(model)), load_file(str(out))
    for name, value in before.items():
        if name.startswith("model.dense."):
            np.testing.assert_array_equal(after[name], value * np.float32(0.5))
        else:
            assert _raw(out, name) == _raw(model, name), name
    with safe_open(str(out), "np") as f:
        meta = f.metadata()
    assert meta["format"] == "np" and meta["origin"] == "test"  # kept
    history = json.loads(meta[st.HISTORY_KEY])
    assert history[-1]["changed"] == ["model.dense.bias", "model.dense.weight"]
    doc, start = _header(out)
    assert start % 8 == 0  # the data section aligned, as the crate writes it
    assert list(doc)[1:] == list(_header(model)[0])[1:]  # the tensors' keys in their order
    assert run("diff", model, out, "--json").json()["counts"]["differs"] == 2


def test_a_run_that_changes_nothing_leaves_the_file_untouched(model: Path) -> None:
    before = model.read_bytes()
    res = run("scale", model, "1", "--in-place")
    assert res.code == 0 and "untouched" in res.out
    assert model.read_bytes() == before


def test_quantize_to_float16_moves_the_tensors_after(model: Path) -> None:
    out = model.parent / "f16.safetensors"
    assert (
        run("quantize", model, "--dtype", "float16", "-s", "model.dense.weight", "-o", out).code
        == 0
    )
    before, after = load_file(str(model)), load_file(str(out))
    assert after["model.dense.weight"].dtype == np.float16
    np.testing.assert_array_equal(
        after["model.dense.weight"], before["model.dense.weight"].astype(np.float16)
    )
    for name in before:
        if name != "model.dense.weight":
            assert _raw(out, name) == _raw(model, name), name
    assert out.stat().st_size < model.stat().st_size + 1024


def test_a_large_file_keeps_room_for_its_header(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above ROOM_FROM_BYTES the data section stays where the copy put it (no move):
    the header is padded with spaces to the room; the package reads the result."""
    monkeypatch.setattr(st, "ROOM_FROM_BYTES", 0)
    out = model.parent / "roomy.safetensors"
    weightcli.scale(model, 2.0, output=out, select=["model.emb.*"])
    raw = out.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert raw[8 : 8 + n].endswith(b" " * 64)  # the premise: padded, not moved
    after = load_file(str(out))
    np.testing.assert_array_equal(
        after["model.emb.weight"], load_file(str(model))["model.emb.weight"] * 2
    )
    # the next run's history outgrows the room: the data section moves once
    weightcli.scale(out, 2.0, in_place=True, select=["model.emb.*"], note="x" * 4000)
    np.testing.assert_array_equal(
        load_file(str(out))["model.emb.weight"], load_file(str(model))["model.emb.weight"] * 4
    )


@pytest.mark.parametrize(
    ("args", "check"),
    [
        (
            ("clip", "--abs-max", "0.5", "-s", "model.dense.*"),
            lambda a, b: np.abs(b["model.dense.weight"]).max() <= 0.5,
        ),
        (("set", "model.dense.bias=0"), lambda a, b: not b["model.dense.bias"].any()),
        (
            ("quantize", "--bits", "4", "-s", "model.dense.weight"),
            lambda a, b: len(np.unique(b["model.dense.weight"][0])) <= 16,
        ),
    ],
)
def test_other_commands(model: Path, args: tuple[str, ...], check) -> None:
    out = model.parent / "out.safetensors"
    res = run(args[0], model, *args[1:], "-o", out)
    assert res.code == 0, res.err
    assert check(load_file(str(model)), load_file(str(out)))


def test_merge_and_batch(model: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.safetensors"
    twice = {k: (np.asarray(v * 3) if v.dtype.kind == "f" else v) for k, v in _tensors().items()}
    save_file(twice, str(other))
    out = tmp_path / "mean.safetensors"
    res = run("merge", model, other, "-o", out)
    assert res.code == 0, res.err
    merged = load_file(str(out))
    np.testing.assert_allclose(
        merged["model.dense.weight"], _tensors()["model.dense.weight"] * 2, rtol=1e-6
    )
    found = run("inspect", "-r", tmp_path, "--no-stats", "--json").lines()
    assert {Path(d["path"]).name for d in found if "path" in d} >= {
        "model.safetensors",
        "other.safetensors",
    }


def test_output_name_must_say_safetensors(model: Path) -> None:
    assert_clean_error(run("scale", model, "2", "-o", model.parent / "x.h5"), "choose another name")


def _hostile(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(text) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + text + data)
    return path


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("header", "data", "length", "words"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}}, b"\0" * 8, None, "bytes"),
        (
            {"a": F32, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
            b"\0" * 8,
            None,
            "overlaps",
        ),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, None, "unnamed"),
        (
            {"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "unknown dtype",
        ),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "shape"),
        ({"a": F32, "__metadata__": {"k": 1}}, b"\0" * 8, None, "strings"),
        ({"a": F32}, b"\0" * 4, None, "truncated"),
        (b'{"a": 1, "a": 2}', b"", None, "twice"),
        (b"{" + b" " * 16, b"", 200_000_000, "limit"),
        (b'{"a": ' + b"[" * 100000, b"", None, "header"),
        (
            {"a": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "bytes",
        ),
    ],
)
def test_hostile_headers(tmp_path: Path, header, data, length, words) -> None:
    path = _hostile(tmp_path / "bad.safetensors", header, data, length)
    before = path.read_bytes()
    for cmd in (("inspect",), ("scale", "2", "-o", tmp_path / "o.safetensors")):
        assert_clean_error(run(cmd[0], path, *cmd[1:]), words)
    assert path.read_bytes() == before
    assert not (tmp_path / "o.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


def test_an_object_in_s3_reads_and_writes(s3, model: Path, tmp_path: Path) -> None:
    s3.put_file(str(model), f"{s3.bucket}/m/model.safetensors")
    url = f"s3://{s3.bucket}/m/model.safetensors"
    there = run("inspect", url, "--json")
    assert there.code == 0, there.err
    assert there.json()["tensors"] == run("inspect", model, "--json").json()["tensors"]
    res = run("scale", url, "2", "-s", "model.dense.*", "-o", f"s3://{s3.bucket}/m/out.safetensors")
    assert res.code == 0, res.err
    got = tmp_path / "got.safetensors"
    s3.get_file(f"{s3.bucket}/m/out.safetensors", str(got))
    np.testing.assert_array_equal(
        load_file(str(got))["model.dense.weight"], load_file(str(model))["model.dense.weight"] * 2
    )


# -- Hugging Face's sharded layout: model.safetensors.index.json ----------------------------


def _sharded(folder: Path) -> Path:
    """A sharded checkpoint as transformers' save_pretrained lays it out."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    parts = [
        {"model.layers.0.weight": rng.standard_normal((8, 4)).astype(np.float32)},
        {
            "model.layers.1.weight": rng.standard_normal((3, 8)).astype(np.float32),
            "lm_head.weight": rng.standard_normal((5, 3)).astype(np.float32),
        },
    ]
    wmap = {}
    for i, part in enumerate(parts):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file(part, str(folder / name), metadata={"format": "pt"})
        wmap.update(dict.fromkeys(part, name))
    total = sum(v.nbytes for p in parts for v in p.values())
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": wmap}))
    return index


def _load_index(index: Path) -> dict[str, np.ndarray]:
    doc = json.loads(index.read_text())
    return {t: load_file(str(index.parent / f))[t] for t, f in doc["weight_map"].items()}


def test_a_sharded_checkpoint_reads_and_patches_shard_by_shard(tmp_path: Path) -> None:
    index = _sharded(tmp_path / "hf")
    doc = run("inspect", index, "--json").json()
    assert doc["format"] == "safetensors-index" and doc["details"]["shards"] == 2
    assert {t["name"] for t in doc["tensors"]} == set(_load_index(index))
    out = tmp_path / "out" / "half.safetensors.index.json"
    out.parent.mkdir()
    res = run("scale", index, "0.5", "-s", "lm_head.*", "--digest", "sha256", "-o", out)
    assert res.code == 0, res.err
    before, after = _load_index(index), _load_index(out)
    np.testing.assert_array_equal(
        after["lm_head.weight"], before["lm_head.weight"] * np.float32(0.5)
    )
    written = json.loads(out.read_text())
    assert set(written["weight_map"].values()) == {
        "half-00001-of-00002.safetensors",
        "half-00002-of-00002.safetensors",
    }
    # the untouched shard copied byte for byte; the history in the index's metadata
    assert (out.parent / "half-00001-of-00002.safetensors").read_bytes() == (
        index.parent / "model-00001-of-00002.safetensors"
    ).read_bytes()
    (entry,) = written["metadata"][st.HISTORY_KEY]
    names = [r["name"] for r in entry["source_digest"]["resources"]]
    assert names == sorted(
        [
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ]
    )
    assert run("verify", out, "--source", index, "--no-load").code == 0


def test_a_sharded_checkpoint_in_place_rewrites_only_the_changed_shard(tmp_path: Path) -> None:
    index = _sharded(tmp_path / "hf")
    first = index.parent / "model-00001-of-00002.safetensors"
    stat = first.stat()
    assert (
        run("quantize", index, "--dtype", "float16", "-s", "model.layers.1.*", "--in-place").code
        == 0
    )
    assert first.stat().st_ino == stat.st_ino and first.stat().st_mtime_ns == stat.st_mtime_ns
    after = _load_index(index)
    assert after["model.layers.1.weight"].dtype == np.float16
    doc = json.loads(index.read_text())
    assert doc["metadata"]["total_size"] == sum(v.nbytes for v in after.values())
    assert sorted(p.name for p in index.parent.iterdir()) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    # directory searches see one model, not its shards
    found = run("inspect", "-r", tmp_path, "--no-stats", "--json").lines()
    assert [Path(d["path"]).name for d in found if "tensors" in d] == [
        "model.safetensors.index.json"
    ]


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d["weight_map"].update({"x": "../model-00001-of-00002.safetensors"}), "outside"),
        (lambda d: d["weight_map"].update({"x": "missing.safetensors"}), "missing"),
        (
            lambda d: d["weight_map"].update({"nope": "model-00001-of-00002.safetensors"}),
            "does not hold",
        ),
        (lambda d: d.update({"metadata": []}), "metadata"),
    ],
)
def test_a_bad_index_is_refused(tmp_path: Path, edit, words: str) -> None:
    index = _sharded(tmp_path / "hf")
    doc = json.loads(index.read_text())
    edit(doc)
    index.write_text(json.dumps(doc))
    assert_clean_error(run("inspect", index), words)
