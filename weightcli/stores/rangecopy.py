"""A copy of a file with some byte ranges replaced, each output byte written once.

New bytes are written at their offsets (``pwrite``); at ``finish`` every range nobody
wrote is filled from the source with ``copy_file_range``, an in-kernel copy like
``cp``'s. Copying the whole file first and overwriting it would write the changed
bytes twice.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from weightcli.errors import CorruptError, OutputError


class RangeCopy:
    """``dst`` (an existing, empty temporary file) becomes the source with ranges replaced.

    The source is ``size`` bytes of ``src`` from ``base`` (by default the whole file):
    a region such as an uncompressed zip member. The copy starts at ``dst_base`` of
    ``dst`` (the bytes before it are the caller's, such as a zip local header). Offsets
    are relative to both bases.
    """

    def __init__(
        self, src: Path, dst: Path, base: int = 0, size: int | None = None, dst_base: int = 0
    ) -> None:
        self.src = src
        self.dst = dst
        self.base = base
        self.dst_base = dst_base
        self.size = src.stat().st_size - base if size is None else size
        self.written: list[tuple[int, int]] = []
        self.bytes_written = 0  # by pwrite; the kernel-copied ranges are not counted
        self.fd: int | None = os.open(dst, os.O_WRONLY)
        try:
            os.ftruncate(self.fd, dst_base + self.size)
        except OSError as exc:
            self.close()
            raise OutputError(f"{dst}: cannot write: {exc.strerror or exc}") from exc

    def write(self, data: Any, at: int) -> None:
        """Put ``data`` (bytes-like, C-contiguous) at byte ``at``."""
        assert self.fd is not None
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(self.fd, view[done:], self.dst_base + at + done)
        except OSError as exc:
            raise OutputError(f"{self.dst}: cannot write: {exc.strerror or exc}") from exc
        self.written.append((at, at + len(view)))
        self.bytes_written += len(view)

    def finish(self) -> None:
        """Fill every range not written from the source, and close."""
        if self.fd is None:
            return
        gaps = []
        pos = 0
        for a, b in sorted(self.written):
            if a > pos:
                gaps.append((pos, a))
            pos = max(pos, b)
        if pos < self.size:
            gaps.append((pos, self.size))
        try:
            with open(self.src, "rb") as src:
                for a, b in gaps:
                    copy_range(src.fileno(), self.fd, a, b - a, self.base, self.dst_base)
        except OSError as exc:
            raise OutputError(f"{self.dst}: cannot write: {exc.strerror or exc}") from exc
        finally:
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def copy_range(
    src: int, dst: int, offset: int, count: int, base: int = 0, dst_base: int = 0
) -> None:
    """Copy ``count`` bytes from ``base + offset`` in one file to ``dst_base + offset``
    in another."""
    done = 0
    try:
        while done < count:
            n = os.copy_file_range(
                src, dst, count - done, base + offset + done, dst_base + offset + done
            )
            if n == 0:
                break
            done += n
    except OSError:
        pass  # no in-kernel copy here (another filesystem, an old kernel): copy by hand
    while done < count:
        chunk = os.pread(src, min(1 << 22, count - done), base + offset + done)
        if not chunk:
            raise CorruptError(f"source shrank while being copied (at byte {offset + done})")
        done += os.pwrite(dst, chunk, dst_base + offset + done)
