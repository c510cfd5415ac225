"""Exception types. The library raises these; the CLI maps them to exit codes.

Every ``WeightcliError`` is a user-facing problem (bad input, bad usage, an
unsupported file): the CLI prints its message as one line and exits 2. Any other
exception is a bug in weightcli and keeps its traceback.

The library never names a command-line flag: a wrong parameter value raises
``ParameterError``, whose message names parameters by placeholders that each caller
spells its own way (the CLI as ``--abs-max``, a recipe or the Python API as ``abs_max``).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from enum import IntEnum


class ExitCode(IntEnum):
    """Every exit code weightcli ends with, decided here (and by a result's
    ``exit_code``, which returns one of these); the worst of a batch is its exit code.

    OK 0; CHECK_FAILED 1 (verify failed a check, diff found differences, inspect
    --fail-on-nonfinite found NaN/Inf, apply --strict left steps out); ERROR 2 (usage,
    input or output: one line on stderr, nothing written); INTERNAL 3 (a bug in
    weightcli: please report it, --debug shows the traceback). A signal: 128 + its
    number (130 SIGINT, 143 SIGTERM).
    """

    OK = 0
    CHECK_FAILED = 1
    ERROR = 2
    INTERNAL = 3


class _Spelled(dict[str, str]):
    def __init__(self, spell: Callable[[str], str]) -> None:
        super().__init__()
        self.spell = spell

    def __missing__(self, key: str) -> str:
        return self.spell(key)


def _render(template: str, spell: Callable[[str], str]) -> str:
    """``template`` with each ``{name}`` spelled by ``spell`` (``{{``/``}}`` are braces)."""
    return template.format_map(_Spelled(spell))


class WeightcliError(Exception):
    """A problem with the user's input or request: one line, exit code 2.

    ``WeightcliError.naming(template)`` (any subclass) makes one whose message names
    parameters as ``{name}`` placeholders; ``render`` spells them.
    """

    exit_code = ExitCode.ERROR
    template: str | None = None

    def __reduce__(self) -> tuple[object, ...]:
        # Raised in a worker or child process and raised again here: keep the template.
        return (_rebuild, (type(self), str(self), self.template))

    @classmethod
    def naming(cls, template: str) -> WeightcliError:
        err = cls(_render(template, plain_name))
        err.template = template
        return err

    @property
    def params(self) -> list[str]:
        """The parameters the message names, in order."""
        if not self.template:
            return []
        return [f for _, f, _, _ in string.Formatter().parse(self.template) if f]

    def render(self, spell: Callable[[str], str]) -> str:
        """The message with each parameter spelled by ``spell``."""
        if self.template is None:
            return str(self)
        return _render(self.template, spell)


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


class MissingExtraError(WeightcliError):
    """A feature needs an optional dependency that is not installed."""

    @classmethod
    def of(cls, feature: str, extra: str, module: str) -> MissingExtraError:
        return cls(
            f"{feature} needs {module}, which is not installed: pip install 'weightcli[{extra}]'"
        )


def _rebuild(cls: type[WeightcliError], message: str, template: str | None) -> WeightcliError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.template = template
    return err


# An error line is cut here: a file's own text (a name, an HDF5 message) can be huge.
MAX_LINE = 1000


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """``text`` as one line of at most ``limit`` characters (embedded newlines, as HDF5
    messages have them, become spaces)."""
    import re

    flat = re.sub(r"\s*[\r\n]+\s*", " ", text).strip()
    if len(flat) > limit:
        flat = f"{flat[:limit]}... ({len(flat) - limit} more characters)"
    return flat


def os_error(exc: OSError) -> str:
    """An OSError as a user reads it: the file (cut to 200 characters) and the reason."""
    name = exc.filename if isinstance(exc.filename, str) else None
    reason = exc.strerror or str(exc)
    return f"{name[:200]}: {reason}" if name else reason


def literal(text: object) -> str:
    """Text (a path, a tensor name) placed inside a message template: braces kept as they are."""
    return str(text).replace("{", "{{").replace("}", "}}")


def plain_name(param: str) -> str:
    """How the Python API and recipes spell a parameter: as it is (``abs_max``)."""
    return param


class ParameterError(UsageError):
    """A parameter has a wrong value, or parameters are combined wrongly.

    The message names parameters as ``{name}`` placeholders (``"{abs_max} must be >= 0"``);
    ``str()`` spells them plainly (``abs_max``), the CLI as its flags (``--abs-max``).
    """

    def __init__(self, template: str) -> None:
        super().__init__(_render(template, plain_name))
        self.template = template


class Terminated(BaseException):
    """SIGTERM arrived (the CLI turns it into this, as Python turns SIGINT into
    KeyboardInterrupt), so that every cleanup path runs: no temporary file is left."""
