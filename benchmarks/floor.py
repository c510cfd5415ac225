"""The user-space floor of a transform: every byte read into one reused, page-aligned
1 MiB buffer (``preadv``) and written back from it (``pwrite``), with no computation.

This is what ``dd bs=1M`` does, from Python: it measures moving the bytes through user
space, not allocating fresh memory for every block.
"""

import mmap
import os
import sys

BLOCK = 1 << 20

src = os.open(sys.argv[1], os.O_RDONLY)
dst = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
buf = mmap.mmap(-1, BLOCK)  # page-aligned, reused for every block
view = memoryview(buf)
at = 0
while n := os.preadv(src, [buf], at):
    done = 0
    while done < n:
        done += os.pwrite(dst, view[done:n], at + done)
    at += n
os.close(dst)
