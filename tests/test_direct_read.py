"""Contiguous HDF5 data is read straight from the file; h5py's own reading is the oracle."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import H5_SAMPLES, REAL_H5

from weightcli.stores import h5util, open_store
from weightcli.stores.base import split
from weightcli.stores.h5util import read_direct


def oracle_file(path: Path) -> h5py.File:
    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as z:
            return h5py.File(io.BytesIO(z.read("model.weights.h5")), "r")
    return h5py.File(path, "r")


@pytest.mark.parametrize("path", H5_SAMPLES + REAL_H5, ids=lambda p: p.name)
def test_every_tensor_reads_as_h5py_reads_it(path: Path) -> None:
    direct = 0
    with open_store(path) as store, oracle_file(path) as f:
        for info in store.tensors():
            want = np.asarray(f[info.path][()])
            got = store.read(info)
            assert got.shape == want.shape
            assert got.tobytes() == want.tobytes(), info.name
            blocks = [b for _, b in store.blocks(info, max_elems=7)]
            assert b"".join(b.tobytes() for b in blocks) == want.tobytes()
            raw = store._raw  # type: ignore[attr-defined]
            if raw is not None and read_direct(*raw, store._datasets[info.path], None) is not None:  # type: ignore[attr-defined]
                direct += 1
    if store.tensors():
        assert direct > 0  # the direct route was taken, not only HDF5's


def test_layouts_hdf5_must_read(tmp_path: Path) -> None:
    p = tmp_path / "mixed.h5"
    rng = np.random.default_rng(0)
    with h5py.File(p, "w") as f:
        f.create_dataset("chunked", data=rng.standard_normal((40, 30)), chunks=(7, 30))
        f.create_dataset(
            "gzip", data=rng.standard_normal((40, 30)).astype("f4"), compression="gzip"
        )
        f.create_dataset("bigendian", data=rng.standard_normal((5, 3)).astype(">f4"))
        f.create_dataset("unwritten", shape=(4, 4), dtype="f4")
        f.create_dataset("scalar", data=np.float32(2.5))
        f.create_dataset("plain", data=rng.standard_normal((9, 2, 3)).astype("f2"))
    with open_store(p) as store, h5py.File(p, "r") as f:
        ds = store._datasets  # type: ignore[attr-defined]
        for name in ("chunked", "gzip", "bigendian", "unwritten"):
            assert read_direct(*store._raw, ds["/" + name], None) is None  # type: ignore[attr-defined]
        for name in ("scalar", "plain"):
            assert read_direct(*store._raw, ds["/" + name], None) is not None  # type: ignore[attr-defined]
        for info in store.tensors():
            want = np.asarray(f[info.path][()])
            got = store.read(info)
            np.testing.assert_array_equal(got, want.astype(got.dtype))
            assert got.dtype == want.dtype.newbyteorder("=")  # big-endian data read natively
            for block in split(info.shape, 5):
                np.testing.assert_array_equal(
                    store.read(info, block), want[block.index] if want.ndim else want
                )


@pytest.mark.parametrize(
    "path", [p for p in H5_SAMPLES + REAL_H5 if p.suffix == ".h5"], ids=lambda p: p.name
)
def test_attributes_read_as_h5py_reads_them(path: Path) -> None:
    with h5py.File(path, "r") as f:
        objects: list[h5py.HLObject] = [f]
        f.visit(lambda name: objects.append(f[name]))
        for obj in objects:
            for key in obj.attrs:
                got, want = h5util._attr(obj, key), obj.attrs[key]
                assert type(got) is type(want), key
                assert np.asarray(got).dtype == np.asarray(want).dtype, key
                assert np.array_equal(np.asarray(got), np.asarray(want)), key
            assert h5util._attr(obj, "no such attribute") is None


def test_file_with_a_user_block(tmp_path: Path) -> None:
    """Dataset offsets count the user block: direct reads and range writes still land."""
    from helpers import run

    p = tmp_path / "ub.h5"
    with h5py.File(p, "w", userblock_size=512) as f:
        f["w"] = np.arange(12, dtype="f4").reshape(3, 4)
    with open(p, "r+b") as fh:
        fh.write(b"user block text")
    with open_store(p) as store:
        (info,) = store.tensors()
        np.testing.assert_array_equal(store.read(info), np.arange(12, dtype="f4").reshape(3, 4))
    out = tmp_path / "out.h5"
    assert run("scale", p, "2", "-o", out).code == 0
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["w"][()], 2 * np.arange(12, dtype="f4").reshape(3, 4))
    assert out.read_bytes()[:15] == b"user block text"
