"""Where an output may be written: the one home of the output policy.

``resolve_output`` applies the refusal rules (no silent overwrite, no OUT == IN);
``temp_beside`` / ``temp_dir_beside`` make the temporary file or folder that a
patcher writes and then renames into place (beside OUT, so the rename stays on one
filesystem).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat as stat_mod
import tempfile
from pathlib import Path

from weightcli.errors import OutputError, ParameterError, UnsupportedError, UsageError, literal
from weightcli.stores import temps
from weightcli.stores.base import Store
from weightcli.stores.detect import index_path
from weightcli.stores.remote import RemotePath, as_path, is_url, upload
from weightcli.stores.temps import TEMP_TAG, remove_stale_temps


def inside(root: Path, name: str) -> Path:
    """``root / name`` for a ``name`` that came from a file (a tensor name, a shard name,
    an object key): the one gate every such name passes before it becomes a path.

    Refused: an empty name or part, ``.`` and ``..`` parts, an absolute name, a NUL or
    a backslash (a separator elsewhere), and anything that resolves outside ``root``
    (a link inside it pointing out)."""
    parts = name.split("/")
    bad = (
        not name
        or name.startswith("/")
        or "\0" in name
        or "\\" in name
        or any(part in ("", ".", "..") for part in parts)
    )
    if bad:
        raise UnsupportedError(
            f"the name {name[:200]!r} from the input cannot be a path inside {root}: "
            "refused (it is empty, absolute, or has '..', '.', NUL or '\\' parts)"
        )
    path = root.joinpath(*parts)
    if isinstance(root, RemotePath):
        return path
    base = root.resolve()
    if not path.resolve().is_relative_to(base):
        raise UnsupportedError(f"the name {name[:200]!r} resolves outside {root}: refused")
    return path


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def plan_output(
    store: Store,
    src: Path,
    raw: str | Path | None,
    in_place: bool,
    force: bool,
    dry_run: bool,
    mkdirs: bool = False,
    other_inputs: tuple[Path, ...] = (),
    as_format: tuple[str, str] | None = None,
) -> Path | None:
    """Where a command writes ``store``'s patched copy (None: a dry run that names no
    output, a plan only). Applies every rule a real run applies (``resolve_output``, the
    suffix of the format written), in a dry run too. ``other_inputs`` (a merge's, a
    transplant's source) are never written over, ``force`` or not. ``as_format``: the
    (format id, label) written when it is not the input's (``migrate`` to ``.keras``)."""
    if raw is None and not in_place and dry_run:
        return None
    target = output_target(src, raw, store.target.name)
    for other in other_inputs:
        if target is not None and _same(other, target):
            raise OutputError(f"{target}: is an input of this run: write the output elsewhere")
    out = resolve_output(
        store.target,
        output_target(src, raw, store.target.name),
        in_place,
        force,
        mkdirs=mkdirs,
        dry_run=dry_run,
    )
    check_suffix(*(as_format or (store.meta.format, store.meta.format_label)), out)
    return out


def output_target(src: Path, raw: str | Path | None, name: str) -> Path | None:
    """The output path a user's OUT means: ``OUT/`` (a trailing slash) or an existing
    folder, for an input that is not a folder itself, means ``OUT/name`` (as ``cp``
    does), ``name`` being the input's file name or checkpoint prefix."""
    if raw is None:
        return None
    text = str(raw)
    out = as_path(text)
    try:
        folder = out.is_dir() and not out.is_symlink()
    except OSError as exc:  # a name too long, ...
        raise OutputError(f"{out}: cannot be written: {exc.strerror or exc}") from exc
    if not src.is_dir() and (text.endswith(("/", os.sep)) or folder):
        return out / name
    return out


def resolve_output(
    src: Path,
    out: Path | None,
    in_place: bool,
    force: bool,
    mkdirs: bool = False,
    dry_run: bool = False,
) -> Path:
    """Where to write ``src``'s patched copy (see ``_resolve``); an output path the system
    refuses (a name too long, ...) is one clear error."""
    try:
        return _resolve(src, out, in_place, force, mkdirs, dry_run)
    except OSError as exc:
        raise OutputError(f"{out}: cannot be written: {exc.strerror or exc}") from exc


def _resolve(
    src: Path,
    out: Path | None,
    in_place: bool,
    force: bool,
    mkdirs: bool,
    dry_run: bool,
) -> Path:
    """Where to write ``src``'s patched copy, enforcing the refusal rules.

    ``in_place`` writes over ``src`` (through a symbolic link, onto its target);
    otherwise ``out`` must be given, must not be ``src`` and must not exist unless
    ``force``. ``mkdirs`` creates missing parent folders (batch runs mirroring a tree);
    otherwise a missing folder is an error. ``dry_run`` checks the same and creates
    nothing.
    """
    if in_place:
        if out is not None and not _same(src, out):
            raise ParameterError(
                "{in_place} writes over the input: do not also give a different {output}"
            )
        if is_url(src):
            return src
        real = Path(os.path.realpath(src))
        if real.is_file() and not os.stat(real).st_mode & 0o222 and not force:
            raise OutputError.naming(
                f"{literal(src)}: is read-only; use {{force}} to write over it all the same "
                "(its mode is kept)"
            )
        return real
    if out is None:
        raise ParameterError("give {output} OUT (or {in_place} to overwrite the input)")
    if _same(src, out):
        raise ParameterError(
            f"{literal(out)}: output is the input; use {{in_place}} to overwrite it"
        )
    # A TF checkpoint output is a prefix: its files are OUT.index and OUT.data-*.
    taken = out.exists() or out.is_symlink() or index_path(out).exists()
    if taken and not force:
        raise OutputError.naming(f"{literal(out)}: already exists; use {{force}} to overwrite it")
    if isinstance(out, RemotePath):  # object storage: folders are only key prefixes
        bucket = out.bucket()
        if not bucket.exists():
            raise OutputError(f"{out}: no bucket {bucket}")
        return out
    if not out.parent.exists():
        if not mkdirs:
            raise OutputError(f"{out}: output folder {out.parent} does not exist")
        if dry_run:
            return out
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{out}: cannot create {out.parent}: {exc.strerror or exc}") from exc
    if not os.access(out.parent, os.W_OK):
        raise OutputError(f"{out}: output folder {out.parent} is not writable")
    return out


# What an output name's suffix promises a loader (suffixes come from the registry).
_PROMISES = {
    ".weights.json": "a Keras 3 sharded weights map",
    ".weights.h5": "a Keras 3 weights file",
    ".keras": "a Keras 3 archive",
    ".h5": "an HDF5 file",
    ".hdf5": "an HDF5 file",
    ".index": "a TF checkpoint index",
}


def check_suffix(fmt: str, label: str, out: Path) -> None:
    """Refuse an output name whose suffix promises another format than the one written
    (Keras picks its loader by the name: ``x.keras`` holding HDF5 bytes does not load)."""
    from weightcli.stores.registry import allowed_suffixes, known_suffixes

    allowed = allowed_suffixes(fmt)
    if allowed is None:
        raise UnsupportedError(f"{out}: weightcli has no writer for the format {fmt}")
    name = out.name.lower()
    for suffix in (*known_suffixes(), ".index"):  # longest first: .weights.h5 before .h5
        if name.endswith(suffix):
            if suffix not in allowed:
                what = _PROMISES.get(suffix, f"a {suffix} file")
                raise UsageError(
                    f"{out}: the name says {what}, but the output is a {label} "
                    "(same format as the input; weightcli does not convert): choose another name"
                )
            return


def _check_folder(out: Path) -> Path:
    if is_url(out):  # built here, uploaded when complete
        return Path(tempfile.gettempdir())
    folder = out.parent
    if not folder.is_dir():
        raise OutputError(f"{out}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{out}: output folder {folder} is not writable")
    return folder


# Temporary names carry the writer's process id (``temps.TEMP_TAG``), so that a later run
# can recognise and remove those a killed process (SIGKILL) could not:
# ``.OUT.weightcli-PID.XXXX.tmp``.


def _temp_prefix(out: Path) -> str:
    return f".{out.name}.{TEMP_TAG}{os.getpid()}."


def temp_beside(out: Path, suffix: str = "") -> Path:
    """A fresh temporary file in OUT's folder (mode as an ordinary new file)."""
    folder = _check_folder(out)
    remove_stale_temps(folder, f".{out.name}.")
    try:
        made = temps.make_file(folder, _temp_prefix(out), f"{suffix}.tmp")
    except OSError as exc:
        raise OutputError(f"{out}: cannot write in {folder}: {exc.strerror or exc}") from exc
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(made, 0o666 & ~umask)  # mkstemp makes 0600; an output is an ordinary file
    return made


def temp_dir_beside(out: Path) -> Path:
    """A fresh temporary folder in OUT's folder."""
    folder = _check_folder(out)
    remove_stale_temps(folder, f".{out.name}.")
    try:
        return temps.make_dir(folder, _temp_prefix(out))
    except OSError as exc:
        raise OutputError(f"{out}: cannot write in {folder}: {exc.strerror or exc}") from exc


_RENAME_NOREPLACE = 1


def _rename_noreplace(src: Path, dst: Path) -> bool:
    """Rename unless ``dst`` exists, atomically (renameat2); False when it exists."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd = -100
        if (
            renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), _RENAME_NOREPLACE)
            == 0
        ):
            return True
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            return False
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(dst))
    # No renameat2 here: a hard link fails when the name exists (files); folders last.
    if src.is_dir():
        if dst.exists() or dst.is_symlink():
            return False
        os.rename(src, dst)
        return True
    try:
        os.link(src, dst)
    except FileExistsError:
        return False
    src.unlink()
    return True


def publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move a finished temporary file or folder to ``out``. Without ``overwrite`` an
    ``out`` that appeared meanwhile (another writer) is never replaced: an error. In
    object storage: uploaded (an object appears whole or not at all), then removed here."""
    if isinstance(out, RemotePath):
        try:
            upload(tmp, out, overwrite)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            temps.forget(tmp)
        return
    if overwrite:
        _keep_mode(tmp, out)
        if tmp.is_dir() and (out.exists() or out.is_symlink()):
            _replace_dir(tmp, out)
        else:
            os.replace(tmp, out)
        temps.forget(tmp)
        return
    try:
        done = _rename_noreplace(tmp, out)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write: {exc.strerror or exc}") from exc
    if not done:
        raise OutputError.naming(
            f"{literal(out)}: appeared while weightcli was writing it (another writer?); "
            "nothing replaced (use {force} to overwrite)"
        )
    temps.forget(tmp)


def publish_with_parts(
    parts: list[tuple[Path, Path]], main: tuple[Path, Path], replace: bool, overwrite: bool
) -> None:
    """Publish a checkpoint of several files: its ``parts`` (temporary, final), then its
    ``main`` file (a map or index that makes them visible). Without ``replace`` every
    part's name is checked free before any is published, and on a failure the parts
    this call published are removed (nothing else)."""
    if not replace:
        taken = [dest for _, dest in parts if dest.exists()]
        if taken:
            raise OutputError.naming(
                f"{literal(taken[0])}: already exists (a part of {literal(main[1].name)}); "
                "use {force} to overwrite"
            )
    published: list[Path] = []
    try:
        for tmp, dest in parts:
            publish(tmp, dest, replace)
            published.append(dest)
        publish(main[0], main[1], overwrite)
    except BaseException:
        if not replace:
            for p in published:
                p.unlink(missing_ok=True)
        raise


def _keep_mode(tmp: Path, out: Path) -> None:
    """A file or folder written over keeps its permission bits, and its owner and
    group where this process may set them (root, or its own files)."""
    try:
        st = os.stat(out)
    except OSError:
        return  # nothing there yet: an ordinary new file
    if stat_mod.S_ISDIR(st.st_mode) != tmp.is_dir():
        return
    with contextlib.suppress(OSError):
        os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, stat_mod.S_IMODE(st.st_mode))


def remove(out: Path) -> None:
    """Remove a published file (local, or an object in storage)."""
    if isinstance(out, RemotePath):
        with contextlib.suppress(Exception):
            out.fs.rm_file(out.key)
        return
    out.unlink(missing_ok=True)


def _replace_dir(new: Path, out: Path) -> None:
    """Move ``new`` to ``out``, replacing an existing ``out`` (kept aside until the move succeeded)."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def write_text(out: Path, text: str) -> None:
    """A text file (a report page) written whole or not at all: a temporary beside it,
    then renamed over ``out`` (a page is replaced, as ``coverage html`` replaces its)."""
    if out.is_dir():
        raise OutputError(f"{out}: is a folder; give a file name")
    tmp = temp_beside(out)
    try:
        tmp.write_text(text, encoding="utf-8")
        publish(tmp, out, overwrite=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write: {exc.strerror or exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
            temps.forget(tmp)
