"""sha256 of a checkpoint's bytes (for the history record). Imports nothing heavy, so it
can run as ``python -m weightcli.digest PATH`` beside a transform."""

from __future__ import annotations

import glob
import hashlib
import os
import sys
from pathlib import Path


def checkpoint_files(path: Path) -> list[Path]:
    """A file; a directory's files, sorted (symbolic links as links: never followed);
    or a TF checkpoint prefix's index and shards."""
    if path.is_file():
        from weightcli.stores.registry import files_of  # a weights map names its shards

        return files_of(path)
    walk_files = getattr(path, "walk_files", None)  # a RemotePath (object storage)
    if walk_files is not None and path.is_dir():
        return list(walk_files())
    if path.is_dir():
        found = []
        for folder, dirs, files in os.walk(path):
            here = Path(folder)
            found += [here / n for n in files]
            found += [here / d for d in dirs if (here / d).is_symlink()]
        return sorted(found)
    stem = glob.escape(path.name)
    return sorted(path.parent.glob(stem + ".index")) + sorted(path.parent.glob(stem + ".data-*"))


def total_size(path: Path) -> int:
    """Bytes of a checkpoint's files (links count as links)."""
    return sum(f.lstat().st_size for f in checkpoint_files(path))


def digest(path: Path) -> str:
    """sha256 over the files (for a directory, each relative name too, then its bytes)."""
    h = hashlib.sha256()
    buf = bytearray(1 << 20)  # one buffer, reused: no fresh pages per chunk
    view = memoryview(buf)
    for f in checkpoint_files(path):
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        if f.is_symlink():
            h.update(b"-> " + os.fsencode(os.readlink(f)))
            continue
        with f.open("rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                h.update(view[:n])  # hashlib releases the GIL for a chunk this size
    return h.hexdigest()


def digest_all(paths: list[Path]) -> list[str]:
    """The sha256 of each path, computed by one thread each (hashlib and file reads
    release the GIL: several large files hash at once on several cores)."""
    from concurrent.futures import ThreadPoolExecutor

    if len(paths) == 1:
        return [digest(paths[0])]
    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        return list(pool.map(digest, paths))


if __name__ == "__main__":
    # One line per path, in order: one process hashes every input of a merge.
    def as_path(arg: str) -> Path:
        if "://" not in arg:
            return Path(arg)
        from weightcli.stores.remote import as_path as remote_path  # only then: fsspec

        return remote_path(arg)

    for value in digest_all([as_path(a) for a in sys.argv[1:]]):
        print(value)
