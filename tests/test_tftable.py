"""The checkpoint index's table reader against hostile tables: snappy blocks checked
against a real snappy encoder (cramjam), snappy bombs and amplified indexes refused
quickly."""

from __future__ import annotations

import struct
import time

import cramjam
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightcli.errors import CorruptError
from weightcli.stores import tftable


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=4000),
        st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=7), st.integers(1, 900)),
    )
)
def test_snappy_decoder_equals_a_real_encoder(data: bytes) -> None:
    packed = bytes(cramjam.snappy.compress_raw(data))
    assert tftable.snappy_decompress(packed, "t") == data


def test_a_snappy_bomb_is_refused_at_once() -> None:
    # Declares 2 GiB from a few bytes: refused before any work.
    bomb = tftable.put_varint(2 << 30) + b"\x00a" + b"\xfe\x01\x00" * 300_000
    started = time.monotonic()
    with pytest.raises(CorruptError, match="declares"):
        tftable.snappy_decompress(bomb, "t")
    assert time.monotonic() - started < 1


def _amplified_table(repeats: int) -> bytes:
    """A valid table whose index names its one data block ``repeats`` times."""
    table = tftable.write_table([(b"k%04d" % i, b"v" * 10) for i in range(200)], block_size=1 << 20)
    footer = table[-tftable.FOOTER :]
    _, pos = tftable.varint(footer, 0)
    _, pos = tftable.varint(footer, pos)
    index_off, pos = tftable.varint(footer, pos)
    index_size, _ = tftable.varint(footer, pos)
    index = tftable._block(table, index_off, index_size, "t")
    (_, handle), *_ = list(tftable._entries(index, "t"))
    builder = tftable._BlockBuilder(1)
    for i in range(repeats):
        builder.add(b"z%08d" % i, handle)
    contents = builder.finish()
    out = bytearray(table[:index_off])
    new_index = tftable.put_varint(len(out)) + tftable.put_varint(len(contents))
    out += contents + b"\0"
    crc = tftable.mask(tftable.google_crc32c.extend(tftable.google_crc32c.value(contents), b"\0"))
    out += struct.pack("<I", crc)
    meta = footer[: len(footer) - 8]
    _, p = tftable.varint(meta, 0)
    _, p = tftable.varint(meta, p)
    new_footer = meta[:p] + new_index
    out += new_footer + b"\0" * (40 - len(new_footer)) + struct.pack("<Q", tftable.MAGIC)
    return bytes(out)


def test_an_index_naming_one_block_many_times_is_refused() -> None:
    assert len(list(tftable.read_table(_amplified_table(1), "t"))) == 200  # the premise
    started = time.monotonic()
    with pytest.raises(CorruptError, match="overlap or repeat"):
        list(tftable.read_table(_amplified_table(5000), "t"))
    assert time.monotonic() - started < 2
