"""Digests of a checkpoint's files, for the history record and ``verify --source``.

A digest is recorded in the shape of the OpenSSF model-signing manifest
(sigstore/model-transparency, ``model_signing``: predicate ``serialization`` and
``resources``), so a signer can reuse it:

    {"serialization": {"method": "files", "hash_type": "blake3"},
     "resources": [{"name": "model.h5", "algorithm": "blake3", "digest": "<hex>"}],
     "root_digest": {"sha256": "<hex>"}}

one resource per file of the checkpoint (a SavedModel or a sharded checkpoint has
several), named by its path relative to the checkpoint's folder (a folder checkpoint: to
the folder itself), sorted by name; ``root_digest`` is sha256 over the resources' raw
digests in that order, as model_signing computes its subject digest. The file digests
are standard: BLAKE3 as ``b3sum`` prints it, sha256 as ``sha256sum``. ``--digest none``
records ``{"serialization": {"method": "none"}}``: no digest was taken.

Imports nothing heavy, so it runs as ``python -m weightcli.digest ALGORITHM PATH...``
beside a transform (one JSON line per path).
"""

from __future__ import annotations

import glob
import hashlib
import json
import mmap
import os
import sys
from pathlib import Path
from typing import Any

from weightcli.errors import ParameterError, literal

ALGORITHMS = ("blake3", "sha256", "none")
DEFAULT = "blake3"
ENV = "WEIGHTCLI_DIGEST"
NONE: dict[str, Any] = {"serialization": {"method": "none"}}


def default_algorithm() -> str:
    """``$WEIGHTCLI_DIGEST``, or BLAKE3."""
    return os.environ.get(ENV) or DEFAULT


def check_algorithm(name: str) -> str:
    if name not in ALGORITHMS:
        raise ParameterError(
            f"{{digest}} {literal(repr(name))} is not one of {', '.join(ALGORITHMS)} "
            f"(from {{digest}} or ${ENV})"
        )
    return name


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


# The process whose BLAKE3 thread pool (Rust's rayon, made on first use) exists. A
# process forked after it was made inherits the pool's "made" state but not its threads:
# hashing there with several threads waits forever. So only the process that made the
# pool hashes on every core; a forked child of it hashes on one (0.43 s a GB here).
_POOL_PID: int | None = None


def _threads() -> int:
    global _POOL_PID
    import blake3

    if _POOL_PID is None:
        _POOL_PID = os.getpid()
    return int(blake3.blake3.AUTO) if os.getpid() == _POOL_PID else 1


def _hasher(algorithm: str) -> Any:
    if algorithm == "blake3":
        import blake3

        return blake3.blake3(max_threads=_threads())
    return hashlib.sha256()


# Bytes of a file mapped at a time for BLAKE3 (a multiple of mmap's granularity).
MMAP_WINDOW = 4 << 20  # (8 MiB: the same speed, 4 MiB more resident)


def file_digest(f: Path, algorithm: str) -> str:
    """The standard digest of one file's bytes (a link: of ``-> TARGET``, never followed)."""
    h = _hasher(algorithm)
    if f.is_symlink():
        h.update(b"-> " + os.fsencode(os.readlink(f)))
        return str(h.hexdigest())
    if algorithm == "blake3" and getattr(f, "walk_files", None) is None and f.stat().st_size:
        # Memory-mapped and hashed on every core, a window at a time: mapping the whole
        # file (``update_mmap``) made its every page count as this process's memory
        # (1 GiB resident for a 1 GB model); windows cost the same time and MMAP_WINDOW.
        with f.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            for at in range(0, size, MMAP_WINDOW):
                n = min(MMAP_WINDOW, size - at)
                with mmap.mmap(fh.fileno(), n, access=mmap.ACCESS_READ, offset=at) as window:
                    h.update(window)
        return str(h.hexdigest())
    buf = bytearray(1 << 20)  # one buffer, reused: no fresh pages per chunk
    view = memoryview(buf)
    with f.open("rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])  # hashlib releases the GIL for a chunk this size
    return str(h.hexdigest())


def digest(path: Path, algorithm: str | None = None) -> dict[str, Any]:
    """The manifest of the checkpoint at ``path`` (see the module's docstring), by
    ``algorithm`` (None: the default)."""
    algorithm = check_algorithm(algorithm or default_algorithm())
    if algorithm == "none":
        return dict(NONE)
    base = path if path.is_dir() else path.parent
    resources = sorted(
        (
            {
                "name": f.relative_to(base).as_posix(),
                "algorithm": algorithm,
                "digest": file_digest(f, algorithm),
            }
            for f in checkpoint_files(path)
        ),
        key=lambda r: r["name"],
    )
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources))
    return {
        "serialization": {"method": "files", "hash_type": algorithm},
        "resources": resources,
        "root_digest": {"sha256": root.hexdigest()},
    }


def digest_all(paths: list[Path], algorithm: str | None = None) -> list[dict[str, Any]]:
    """The manifest of each path, one thread each (hashes and file reads release the
    GIL: several large files hash at once on several cores, several objects download at
    once); local files by BLAKE3 one at a time instead, on every core already (a mapped
    window a file at once cost the memory of three windows for a three-input merge, and
    no time)."""
    from concurrent.futures import ThreadPoolExecutor

    blake3_local = check_algorithm(algorithm or default_algorithm()) != "sha256" and not any(
        getattr(p, "walk_files", None) is not None
        for p in paths  # (remote: fetched at once)
    )
    if len(paths) == 1 or blake3_local:
        return [digest(p, algorithm) for p in paths]
    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        return list(pool.map(lambda p: digest(p, algorithm), paths))


if __name__ == "__main__":
    # One JSON line per path, in order: one process hashes every input of a merge.
    def as_path(arg: str) -> Path:
        if "://" not in arg:
            return Path(arg)
        from weightcli.stores.remote import as_path as remote_path  # only then: fsspec

        return remote_path(arg)

    for value in digest_all([as_path(a) for a in sys.argv[2:]], sys.argv[1]):
        print(json.dumps(value))
