"""``verify``: is a checkpoint sound? Static checks (no framework), reference checks,
then (unless ``no_load``) load and run it with the framework."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from weightcli.checks import FAIL, PASS, SKIP, reference_checks, static_checks
from weightcli.child import ChildDied, run_in_child
from weightcli.compare import check_tolerances
from weightcli.digest import checkpoint_files, digest
from weightcli.errors import CorruptError, ParameterError, UsageError
from weightcli.results import Check, VerifyResult
from weightcli.stores import Store, open_store
from weightcli.stores.remote import as_local, as_path, as_urls

__all__ = ["VerifyRequest", "VerifyResult", "run"]

# The generated input's batch size, at most (memory grows with it).
MAX_BATCH = 4096


@dataclass(frozen=True)
class VerifyRequest:
    """Which checks to run and how outputs are compared (numpy ``allclose`` tolerances)."""

    reference: Path | None = None
    architecture: Path | None = None
    no_load: bool = False
    seed: int = 0
    batch: int = 4
    input_file: Path | None = None
    atol: float = 1e-8
    rtol: float = 1e-5
    min_cosine: float | None = None
    custom_objects: Path | None = None
    # Load models whose loading runs code they carry (Lambda bytecode, a SavedModel's graph).
    trust_code: bool = False
    # Files that should be the recorded sources of the checkpoint's last history entry.
    sources: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        check_tolerances(self.atol, self.rtol)
        if self.trust_code and self.no_load:
            raise ParameterError("{trust_code} applies to loading the model: drop {no_load}")
        if self.min_cosine is not None and not (
            math.isfinite(self.min_cosine) and -1 <= self.min_cosine <= 1
        ):
            raise ParameterError(f"{{min_cosine}} must be between -1 and 1, got {self.min_cosine}")
        if not 1 <= self.batch <= MAX_BATCH:
            raise ParameterError(f"{{batch}} must be from 1 to {MAX_BATCH}, got {self.batch}")
        if not 0 <= self.seed < 2**32:
            raise ParameterError(f"{{seed}} must be from 0 to 2**32-1, got {self.seed}")


def run(request: VerifyRequest, path: str | Path) -> VerifyResult:
    """Every check for one checkpoint. Opening errors propagate (exit 2: could not verify).

    The framework checks (load, forward pass, outputs) run in a child process: a model
    that makes TensorFlow abort fails its "loads" check with the signal, and the caller
    goes on (a batch reports the models after it)."""
    result = VerifyResult(str(path))
    try:
        store = open_store(path)
    except CorruptError as exc:
        # Damage that verify finds is a failed check in every format (exit 1), whether
        # the container says so on opening (a .keras CRC) or a tensor does on reading.
        result.checks.append(Check("readable", FAIL, str(exc)))
        return result
    with store:
        try:
            store.check_container()  # what opening skipped (a remote archive's CRC)
        except CorruptError as exc:
            result.checks.append(Check("readable", FAIL, str(exc)))
            return result
        checks, _ = static_checks(store)
        result.checks += checks
        if request.reference is not None:
            with open_store(request.reference) as ref:
                result.checks += reference_checks(store, ref)
        if request.sources:
            result.checks += source_checks(store, request.sources)
    if request.no_load:
        return result
    try:
        # The frameworks read local files only: models in object storage are downloaded
        # here (the copies go when this process ends), and the child loads the copies.
        local = replace(
            request,
            reference=as_local(request.reference) if request.reference else None,
            architecture=as_local(request.architecture) if request.architecture else None,
            input_file=as_local(request.input_file) if request.input_file else None,
        )
        checks = run_in_child(framework_checks, local, as_local(as_path(path)))
        # The details name the models as the user did, not their downloaded copies.
        for check in checks:
            check.detail = as_urls(check.detail)
        result.checks += checks
    except ChildDied as exc:
        result.checks.append(
            Check("loads", FAIL, f"the framework crashed loading or running it: {exc}")
        )
    return result


def framework_checks(request: VerifyRequest, path: Path) -> list[Check]:
    """Load the model with its framework, run it, and compare with the reference's outputs."""
    from weightcli import framework

    if request.custom_objects is not None:
        framework.import_custom_objects(request.custom_objects)
    out: list[Check] = []
    architecture = request.architecture
    with open_store(path) as store:
        runnable, check = framework.load(path, store, architecture, request.trust_code)
    out.append(check)
    if runnable is None:
        return out
    feed = framework.make_inputs(runnable, request.seed, request.batch, request.input_file)
    outs, check = framework.run(runnable, feed)
    out.append(check)
    if request.reference is None or outs is None:
        return out
    with open_store(request.reference) as ref_store:
        ref_runnable, ref_check = framework.load(
            request.reference, ref_store, architecture, request.trust_code
        )
    if ref_runnable is None:
        out.append(
            Check("outputs match reference", SKIP, f"reference did not load: {ref_check.detail}")
        )
        return out
    ref_outs, ref_run = framework.run(ref_runnable, feed)
    if ref_outs is None:
        out.append(
            Check("outputs match reference", FAIL, f"reference failed to run: {ref_run.detail}")
        )
        return out
    out.append(
        framework.compare_outputs(outs, ref_outs, request.atol, request.rtol, request.min_cosine)
    )
    return out


def recorded_sources(entry: dict[str, Any]) -> list[tuple[str, Any]]:
    """(file name, recorded digest) of every source of one history entry: the source
    (``source_digest``, or ``source_sha256`` in histories before 0.2), a transplant's
    SOURCE, a merge's inputs and base. A digest is a manifest (``weightcli.digest``) or,
    in old histories, a sha256 hex string; None where none was taken."""
    found: list[tuple[str, Any]] = []
    source = str(entry.get("source", "?"))
    found.append((source, entry.get("source_digest", entry.get("source_sha256"))))
    for step in entry.get("steps") or []:
        if not isinstance(step, dict):
            continue
        if "source" in step and ("source_digest" in step or "source_sha256" in step):
            found.append(
                (str(step["source"]), step.get("source_digest", step.get("source_sha256")))
            )
        inputs = step.get("inputs")
        for item in [*(inputs if isinstance(inputs, list) else []), step.get("base")]:
            if isinstance(item, dict) and "file" in item:
                found.append((str(item["file"]), item.get("digest", item.get("sha256"))))
    return [(name, d) for name, d in found if _taken(d)]


def _taken(recorded: Any) -> bool:
    if isinstance(recorded, str):
        return len(recorded) == 64
    return (
        isinstance(recorded, dict)
        and isinstance(recorded.get("serialization"), dict)
        and recorded["serialization"].get("hash_type") in ("blake3", "sha256")
        and isinstance(recorded.get("resources"), list)
    )


def _same(path: Path, recorded: Any) -> bool:
    if isinstance(recorded, str):  # before 0.2: sha256 over the file (a folder: names too)
        return legacy_sha256(path) == recorded
    algorithm = recorded["serialization"]["hash_type"]
    mine = digest(path, algorithm)
    theirs = sorted(str(r.get("digest")) for r in recorded["resources"] if isinstance(r, dict))
    return sorted(r["digest"] for r in mine["resources"]) == theirs


def source_checks(store: Store, sources: tuple[Path, ...]) -> list[Check]:
    """Is each of ``sources`` a recorded source of the checkpoint's last history entry
    (by the digest algorithm that was recorded)? One check per file. No history, or no
    digest in it, cannot be verified: an error (exit 2), never a pass."""
    history = store.meta.history
    if not history:
        raise UsageError(
            f"{store.path}: has no weightcli history: no sources were recorded to check"
        )
    recorded = recorded_sources(history[-1])
    if not recorded:
        raise UsageError(
            f"{store.path}: its last history entry records no digest of its sources "
            "(written with --digest none, or by a command that takes none): cannot check"
        )
    out = []
    for path in sources:
        match = next((name for name, d in recorded if _same(path, d)), None)
        if match is not None:
            out.append(Check(f"source {path.name}", PASS, f"{path} is the recorded source {match}"))
        else:
            names = ", ".join(name for name, _ in recorded)
            out.append(
                Check(
                    f"source {path.name}",
                    FAIL,
                    f"{path} is none of the recorded sources ({names}): its digest differs",
                )
            )
    return out


def legacy_sha256(path: Path) -> str:
    """The digest histories before 0.2 recorded (``source_sha256``): sha256 over the
    checkpoint's files, each preceded, in a folder, by its relative name."""
    import hashlib
    import os

    h = hashlib.sha256()
    for f in checkpoint_files(path):
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        if f.is_symlink():
            h.update(b"-> " + os.fsencode(os.readlink(f)))
            continue
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()
