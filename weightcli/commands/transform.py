"""``scale``, ``clip``, ``quantize``, ``apply``: steps streamed through the pipeline into
a patched copy of the checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from weightcli import pipeline
from weightcli.errors import ParameterError
from weightcli.params import OutputSpec
from weightcli.results import TransformResult
from weightcli.steps import Step
from weightcli.stores import open_store
from weightcli.stores.base import BLOCK_ELEMS
from weightcli.stores.remote import as_path

__all__ = ["TransformRequest", "TransformResult", "run"]


@dataclass(frozen=True)
class TransformRequest:
    """The steps and where their output goes.

    One model: ``output`` (or ``in_place``; ``OUT/`` with a trailing slash, or an existing
    folder, puts the output in that folder under the input's name). Several: ``outputs`` maps each input to its
    place below an output folder (missing folders are created). ``dry_run`` reports and
    writes nothing. ``allow_nonfinite`` writes NaN/Inf that the steps create (an error
    otherwise). ``command`` names the command in the output's history.
    """

    steps: tuple[Step, ...]
    command: str
    out: OutputSpec = field(default_factory=OutputSpec)
    outputs: tuple[tuple[Path, Path], ...] = ()
    block_elems: int = BLOCK_ELEMS

    def __post_init__(self) -> None:
        if not self.steps:
            raise ParameterError("give at least one step")
        if self.out.in_place and self.outputs:
            raise ParameterError("{in_place} and {output_dir} exclude each other")
        if self.block_elems < 1:
            raise ParameterError("{block_elems} must be at least 1")

    def output_for(self, path: Path) -> str | Path | None:
        for src, out in self.outputs:
            if src == path:
                return out
        return self.out.output


def run(request: TransformRequest, path: str | Path) -> TransformResult:
    """Apply the request's steps to one checkpoint and write its patched copy.

    A dry run checks everything a real run checks (the output too, when one is named)
    and writes nothing."""
    src = as_path(path)
    with open_store(src) as store:
        out = request.out.plan(store, src, request.output_for(src), mkdirs=bool(request.outputs))
        return pipeline.run(
            store,
            request.steps,
            None if request.out.dry_run else out,
            [request.command, str(src)],
            request.out,
            block_elems=request.block_elems,
        )
