"""Exception types. The library raises these; the CLI maps them to exit codes.

Every ``WeightcliError`` is a user-facing problem (bad input, bad usage, an
unsupported file): the CLI prints its message as one line and exits 2. Any other
exception is a bug in weightcli and keeps its traceback.
"""

from __future__ import annotations


class WeightcliError(Exception):
    """A problem with the user's input or request: one line, exit code 2."""

    exit_code = 2


class InputError(WeightcliError):
    """The input path is missing, unreadable, or not a model weightcli knows."""


class CorruptError(WeightcliError):
    """The input is a known format but its bytes are damaged (truncated, bad checksum)."""


class UnsupportedError(WeightcliError):
    """The input is valid but uses a feature weightcli refuses to handle."""


class UsageError(WeightcliError):
    """The request itself is wrong: bad option values, a selection matching nothing."""


class OutputError(WeightcliError):
    """The output cannot be written where asked (exists, read-only, missing folder)."""
