"""The user-space floor for a transform: copy a file through Python in 16 MiB blocks
(read into memory, write out), with no computation at all."""

import sys

with open(sys.argv[1], "rb") as src, open(sys.argv[2], "wb") as dst:
    while block := src.read(16 << 20):
        dst.write(block)
