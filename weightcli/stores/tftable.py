"""The sorted table format of a TensorBundle ``.index`` file (LevelDB's SSTable).

Layout: data blocks, a metaindex block, an index block, then a 48-byte footer
(two block handles, padding, the magic number). Each block is followed by a
1-byte compression type and a masked crc32c of the block plus that byte. A block
holds prefix-compressed entries (shared, non-shared and value lengths as varints,
then the key suffix and value), then uint32 restart offsets and their count.
TensorBundles are never compressed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import google_crc32c

from weightcli.errors import CorruptError

MAGIC = 0xDB4775248B80FB57
FOOTER = 48
BLOCK_TRAILER = 5
MASK_DELTA = 0xA282EAD8
SNAPPY_MAX_RATIO = 32
SNAPPY_MAX_BLOCK = 64 << 20


def crc32c(data: bytes | memoryview) -> int:
    return int(
        google_crc32c.value(bytes(data))
        if isinstance(data, memoryview)
        else google_crc32c.value(data)
    )


def mask(crc: int) -> int:
    """LevelDB/TensorFlow's crc masking (a stored crc of data that holds crcs stays meaningful)."""
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF


def varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CorruptError("truncated varint in checkpoint index")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CorruptError("bad varint in checkpoint index")


def put_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_table(data: bytes, label: str) -> Iterator[tuple[bytes, bytes]]:
    """All (key, value) pairs of a table, in order, verifying every block's checksum;
    every error names ``label``."""
    try:
        yield from _read_table(data, label)
    except CorruptError as exc:
        if str(exc).startswith(label):
            raise
        raise CorruptError(f"{label}: {exc}") from None


def _read_table(data: bytes, label: str) -> Iterator[tuple[bytes, bytes]]:
    if len(data) < FOOTER:
        raise CorruptError(f"{label}: too short to be a checkpoint index ({len(data)} bytes)")
    footer = data[-FOOTER:]
    if struct.unpack("<Q", footer[-8:])[0] != MAGIC:
        raise CorruptError(f"{label}: not a checkpoint index (bad table magic)")
    _, pos = varint(footer, 0)  # metaindex offset
    _, pos = varint(footer, pos)  # metaindex size
    index_off, pos = varint(footer, pos)
    index_size, pos = varint(footer, pos)
    index = _block(data, index_off, index_size, label)
    # Each data block once, in file order, before the index: a crafted index naming one
    # block many times (or overlapping blocks) would multiply the work without bound.
    done = 0
    for _, handle in _entries(index, label):
        off, p = varint(handle, 0)
        size, _ = varint(handle, p)
        if off < done or off + size + BLOCK_TRAILER > index_off:
            raise CorruptError(f"{label}: index blocks overlap or repeat (damaged file)")
        done = off + size + BLOCK_TRAILER
        yield from _entries(_block(data, off, size, label), label)


def _block(data: bytes, off: int, size: int, label: str) -> bytes:
    end = off + size
    if end + BLOCK_TRAILER > len(data):
        raise CorruptError(f"{label}: block beyond the end of the index (truncated?)")
    block = data[off:end]
    kind = data[end]
    (stored,) = struct.unpack("<I", data[end + 1 : end + 5])
    if mask(google_crc32c.extend(google_crc32c.value(block), bytes([kind]))) != stored:
        raise CorruptError(f"{label}: index block checksum mismatch (damaged file)")
    if kind == 1:
        return snappy_decompress(block, label)
    if kind != 0:
        raise CorruptError(f"{label}: unknown index block compression (type {kind})")
    return block


def snappy_decompress(data: bytes, label: str) -> bytes:
    """Raw snappy (some TensorFlow versions compress index blocks; they are small)."""
    try:
        n, pos = varint(data, 0)
        # Snappy expands at most ~32x (a 64-byte copy in 2 bytes); more is a bomb.
        if n > SNAPPY_MAX_RATIO * len(data) + 64 or n > SNAPPY_MAX_BLOCK:
            raise ValueError(f"declares {n} bytes from {len(data)}")
        out = bytearray()
        while pos < len(data):
            if len(out) > n:
                raise ValueError("longer than declared")
            tag = data[pos]
            pos += 1
            kind = tag & 3
            if kind == 0:
                length = tag >> 2
                if length >= 60:
                    extra = length - 59
                    length = int.from_bytes(data[pos : pos + extra], "little")
                    pos += extra
                length += 1
                out += data[pos : pos + length]
                pos += length
                continue
            if kind == 1:
                length = 4 + ((tag >> 2) & 7)
                offset = ((tag >> 5) << 8) | data[pos]
                pos += 1
            elif kind == 2:
                length = (tag >> 2) + 1
                offset = int.from_bytes(data[pos : pos + 2], "little")
                pos += 2
            else:
                length = (tag >> 2) + 1
                offset = int.from_bytes(data[pos : pos + 4], "little")
                pos += 4
            if offset == 0 or offset > len(out):
                raise ValueError("bad copy offset")
            start = len(out) - offset
            if offset >= length:
                out += out[start : start + length]
            else:  # a copy overlapping its own output repeats the last ``offset`` bytes
                pattern = bytes(out[start:])
                out += (pattern * (length // offset + 1))[:length]
        if len(out) != n:
            raise ValueError("length mismatch")
        return bytes(out)
    except (ValueError, IndexError) as exc:
        raise CorruptError(f"{label}: damaged compressed index block ({exc})") from exc


def _entries(block: bytes, label: str) -> Iterator[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise CorruptError(f"{label}: malformed index block")
    (n_restarts,) = struct.unpack("<I", block[-4:])
    limit = len(block) - 4 - 4 * n_restarts
    if limit < 0:
        raise CorruptError(f"{label}: malformed index block")
    pos = 0
    key = b""
    while pos < limit:
        shared, pos = varint(block, pos)
        unshared, pos = varint(block, pos)
        vlen, pos = varint(block, pos)
        if shared > len(key) or pos + unshared + vlen > limit:
            raise CorruptError(f"{label}: malformed index entry")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        value = block[pos : pos + vlen]
        pos += vlen
        yield key, value


class _BlockBuilder:
    def __init__(self, restart_interval: int) -> None:
        self.interval = restart_interval
        self.buf = bytearray()
        self.restarts = [0]
        self.count = 0
        self.last = b""

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.count < self.interval:
            n = min(len(key), len(self.last))
            while shared < n and key[shared] == self.last[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.count = 0
        self.buf += put_varint(shared) + put_varint(len(key) - shared) + put_varint(len(value))
        self.buf += key[shared:] + value
        self.last = key
        self.count += 1

    def finish(self) -> bytes:
        return (
            bytes(self.buf)
            + b"".join(struct.pack("<I", r) for r in self.restarts)
            + struct.pack("<I", len(self.restarts))
        )

    def size(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4


def write_table(entries: list[tuple[bytes, bytes]], block_size: int = 4096) -> bytes:
    """Serialise sorted (key, value) pairs as a table TensorFlow can read."""
    out = bytearray()
    index = _BlockBuilder(1)

    def emit(contents: bytes) -> bytes:
        offset = len(out)
        out.extend(contents)
        out.append(0)
        out.extend(
            struct.pack("<I", mask(google_crc32c.extend(google_crc32c.value(contents), b"\0")))
        )
        return put_varint(offset) + put_varint(len(contents))

    block = _BlockBuilder(16)
    for i, (key, value) in enumerate(entries):
        if i and key <= entries[i - 1][0]:
            raise ValueError("table keys must be sorted and unique")
        block.add(key, value)
        if block.size() >= block_size:
            index.add(key, emit(block.finish()))
            block = _BlockBuilder(16)
    if block.count or not entries:
        index.add(entries[-1][0] if entries else b"", emit(block.finish()))
    meta = emit(_BlockBuilder(16).finish())
    idx = emit(index.finish())
    footer = meta + idx
    footer += b"\0" * (40 - len(footer)) + struct.pack("<Q", MAGIC)
    out.extend(footer)
    return bytes(out)
