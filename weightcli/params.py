"""Parameter groups that many requests share, each declared once: a request contains
them (``request.out``), the CLI adds each group's options once and parses them into it
(``cli/options.py``), and the Python API takes the same fields as keywords.

Rules about a group are enforced here, on creation, never in click: the API and the
CLI refuse the same things with the same message (parameters named as ``{name}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypedDict

from weightcli.digest import check_algorithm, default_algorithm
from weightcli.errors import ParameterError
from weightcli.stores.base import Store
from weightcli.stores.output import plan_output

# A note is kept in the output's history: a sentence, not a file.
MAX_NOTE_CHARS = 4096


@dataclass(frozen=True)
class OutputSpec:
    """Where and how a command that writes a checkpoint writes it.

    ``output``: OUT (``OUT/`` or an existing folder: into it, under the input's name);
    ``in_place``: over the input (atomically, its mode kept); ``force``: over an existing
    OUT; ``dry_run``: check and report everything, write nothing; ``note``: why, kept in
    the history; ``allow_nonfinite``: write NaN/Inf the command creates (else an error);
    ``digest``: how the sources are hashed for the history (blake3, sha256, none;
    default ``$WEIGHTCLI_DIGEST`` or blake3); ``compress``: store the output's tensors
    compressed (HDF5 chunks with gzip; a ``.keras`` weights member deflated), where the
    format allows it (else an error); ``requantize``: change quantized weights as the
    floats they stand for and store them as new codes under their scales.
    """

    output: str | Path | None = None
    in_place: bool = False
    force: bool = False
    dry_run: bool = False
    note: str | None = None
    allow_nonfinite: bool = False
    digest: str | None = None  # None: the default
    compress: bool = False
    # Quantized weights changed as the floats they stand for, then stored as new codes
    # under their scales (which stay); else a change that needs new codes is refused.
    requantize: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", check_algorithm(self.digest or default_algorithm()))
        if self.note is not None and len(self.note) > MAX_NOTE_CHARS:
            raise ParameterError(
                f"{{note}} is {len(self.note)} characters (at most {MAX_NOTE_CHARS})"
            )

    def plan(
        self,
        store: Store,
        src: Path,
        output: str | Path | None = None,
        mkdirs: bool = False,
        other_inputs: tuple[Path, ...] = (),
        as_format: tuple[str, str] | None = None,
    ) -> Path | None:
        """Where ``store``'s patched copy goes (``output`` overrides this spec's, for a
        batch's mirrored outputs): every rule of ``stores.output.plan_output``."""
        if self.compress:
            reason = store.cannot_compress()
            if reason:
                raise ParameterError(f"{{compress}}: {reason}")
        return plan_output(
            store,
            src,
            self.output if output is None else output,
            self.in_place,
            self.force,
            self.dry_run,
            mkdirs=mkdirs,
            other_inputs=other_inputs,
            as_format=as_format,
        )

    def refuse(self, *fields: str, command: str) -> None:
        """Fields a command cannot honour: an error when given, never ignored."""
        for name in fields:
            if getattr(self, name):
                raise ParameterError(f"{{{name}}} does not apply to {command}")


@dataclass(frozen=True)
class RunSpec:
    """How a command runs over its inputs and reports (the CLI's batch group).

    ``recursive``: search folders for models; ``output_dir``: several inputs' outputs
    below DIR, mirroring the input tree; ``jobs``: models at a time (None: one per
    core); ``progress``: a progress bar (None: on a terminal only); ``as_json``: JSON
    on stdout; ``debug``: tracebacks."""

    recursive: bool = False
    output_dir: Path | None = None
    jobs: int | None = None
    progress: bool | None = None
    as_json: bool = False
    debug: bool = False

    def __post_init__(self) -> None:
        if self.jobs is not None and self.jobs < 1:
            raise ParameterError(f"{{jobs}} must be at least 1, got {self.jobs}")


class OutputKeywords(TypedDict, total=False):
    """``OutputSpec`` as the Python API spells it: the keyword arguments every writing
    function takes (``weightcli.scale(p, 2, output="x.h5", note="why")``)."""

    output: str | Path | None
    in_place: bool
    force: bool
    dry_run: bool
    note: str | None
    allow_nonfinite: bool
    digest: str | None
    compress: bool
    requantize: bool


OUTPUT_FIELDS = tuple(f.name for f in fields(OutputSpec))


def take(keywords: Mapping[str, Any], names: tuple[str, ...], function: str) -> dict[str, Any]:
    """The keywords among ``names``; any other is an error (a misspelt keyword is never
    ignored)."""
    unknown = sorted(set(keywords) - set(names))
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}")
    return dict(keywords)
