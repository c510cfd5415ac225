"""The floor of a streaming transform in this stack: what no weightcli command can beat.

One process (Python, numpy and the native kernels imported, as weightcli must) runs the
fused kernel (``native.map_pair_f32``: scale's product and the before/after summary)
over every 1 MiB of the source and writes each result with ``pwrite`` from one reused
buffer. The source is read through a mapped window of WINDOW bytes at a time (no copy
into a user-space buffer, and memory bounded as weightcli's must be). That is
``scale``'s work without its checks, selection, bookkeeping, history or hash (the hash
runs on the other core, and alone takes less than this). ``2`` passes: a read-only
statistics pass over the source first (``quantize``'s per-channel ranges, ``prune``'s
histogram), then the transform pass.

    floor_transform.py SRC DST PASSES
"""

import mmap
import os
import sys

import numpy as np

from weightcli import native

BLOCK = 1 << 20
WINDOW = 8 << 20  # (whole-file mappings count the whole file as the process's memory)

src, dst, passes = sys.argv[1], sys.argv[2], int(sys.argv[3])
k = native.kernels
assert k is not None, "the native kernels are not built"
fi = os.open(src, os.O_RDONLY)
size = os.fstat(fi).st_size
end = size - size % 4
fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
buf = np.empty(BLOCK // 4, np.float32)


def windows():
    for at in range(0, end, WINDOW):
        n = min(WINDOW, end - at)
        with mmap.mmap(
            fi, n, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ, offset=at
        ) as m:
            x = np.frombuffer(m, np.float32)
            for b in range(0, x.size, BLOCK // 4):
                yield at + 4 * b, x[b : b + BLOCK // 4]
            del x


if passes == 2:
    for _, x in windows():
        k.stats_f32(x)
        del x  # (the window closes when its last block is let go)
for at, x in windows():
    out = buf[: x.size]
    k.map_pair_f32(x, out, 0, 0.5, 0.0)
    os.pwrite(fo, out, at)
    del x
os.close(fo)
os.close(fi)
