"""``verify``: is a checkpoint sound? Static checks (no framework), reference checks,
then (unless ``no_load``) load and run it with the framework."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from weightcli.checks import FAIL, SKIP, reference_checks, static_checks
from weightcli.compare import check_tolerances
from weightcli.errors import ParameterError
from weightcli.results import Check, VerifyResult
from weightcli.stores import open_store

__all__ = ["VerifyRequest", "VerifyResult", "run"]


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

    def __post_init__(self) -> None:
        check_tolerances(self.atol, self.rtol)
        if self.min_cosine is not None and not (
            math.isfinite(self.min_cosine) and -1 <= self.min_cosine <= 1
        ):
            raise ParameterError(f"{{min_cosine}} must be between -1 and 1, got {self.min_cosine}")
        if self.batch < 1:
            raise ParameterError("{batch} must be at least 1")
        if not 0 <= self.seed < 2**32:
            raise ParameterError(f"{{seed}} must be from 0 to 2**32-1, got {self.seed}")


def run(request: VerifyRequest, path: str | Path) -> VerifyResult:
    """Every check for one checkpoint. Opening errors propagate (exit 2: could not verify)."""
    result = VerifyResult(str(path))
    with open_store(path) as store:
        checks, _ = static_checks(store)
        result.checks += checks
        if request.reference is not None:
            with open_store(request.reference) as ref:
                result.checks += reference_checks(store, ref)
        if request.no_load:
            return result
        from weightcli import framework

        runnable, check = framework.load(Path(path), store, request.architecture)
        result.checks.append(check)
    if runnable is None:
        return result
    from weightcli import framework

    feed = framework.make_inputs(runnable, request.seed, request.batch, request.input_file)
    outs, check = framework.run(runnable, feed)
    result.checks.append(check)
    if request.reference is not None and outs is not None:
        with open_store(request.reference) as ref_store:
            ref_runnable, ref_check = framework.load(
                request.reference, ref_store, request.architecture
            )
        if ref_runnable is None:
            result.checks.append(
                Check(
                    "outputs match reference", SKIP, f"reference did not load: {ref_check.detail}"
                )
            )
        else:
            ref_outs, ref_run = framework.run(ref_runnable, feed)
            if ref_outs is None:
                result.checks.append(
                    Check(
                        "outputs match reference",
                        FAIL,
                        f"reference failed to run: {ref_run.detail}",
                    )
                )
            else:
                result.checks.append(
                    framework.compare_outputs(
                        outs, ref_outs, request.atol, request.rtol, request.min_cosine
                    )
                )
    return result
