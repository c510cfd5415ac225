"""One policy for symbolic links in every format: a link that leads out of the model
(its folder, or the folder of the file that names the others) is refused; links inside
it are read as what they point to, and copied as links. A file never makes weightcli
read, or copy into an output, something outside the model it names."""

from __future__ import annotations

import os
from pathlib import Path

from weightcli.errors import UnsupportedError
from weightcli.stores.remote import is_url


def _resolved(p: Path) -> Path:
    try:
        return p.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # a loop of links
        raise UnsupportedError(f"{p}: a symbolic link that cannot be resolved: {exc}") from exc


def check_inside(root: Path, path: Path) -> Path:
    """``path`` (a shard, a member file), refused when it resolves outside ``root``."""
    if is_url(root):
        return path
    top = _resolved(root)
    target = _resolved(path)
    if target != top and top not in target.parents:
        how = f" (a link to {os.readlink(path)})" if path.is_symlink() else ""
        raise UnsupportedError(f"{path}: leads out of the model folder {root}{how}: refused")
    return path


def refuse_links_out(root: Path) -> None:
    """Every symbolic link below ``root`` (a model folder) must point inside it."""
    if is_url(root):
        return
    top = _resolved(root)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            if not p.is_symlink():
                continue
            target = _resolved(p)
            if target != top and top not in target.parents:
                raise UnsupportedError(
                    f"{p}: a symbolic link out of the model folder (to {os.readlink(p)}): refused"
                )
