"""The command-line interface: a thin click layer over the library (``weightcli.commands``).

Library errors (``WeightcliError``) become one line on stderr and exit code 2, with
parameters spelled as this CLI's flags; ``--debug`` (anywhere on the command line)
shows the traceback instead.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import re
import signal
import sys

import click

from weightcli.errors import ExitCode, Terminated, WeightcliError, one_line, os_error
from weightcli.version import __version__

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow, if a command loads it
# numpy's OpenBLAS starts a thread per core at import, and each one spins for a while
# before it sleeps: 0.1 s of CPU on this two-core machine, taken from the read-ahead and
# hashing threads of every command (measured with perf: ``blas_thread_server``). No
# command needs threaded BLAS (report's spectra run one BLAS thread per helper).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# Each command's module is imported only when that command runs (start-up time).
COMMANDS = {
    "inspect": "weightcli.cli.inspect_cmd:inspect",
    "report": "weightcli.cli.report_cmd:report",
    "scale": "weightcli.cli.transform_cmds:scale",
    "clip": "weightcli.cli.transform_cmds:clip",
    "quantize": "weightcli.cli.transform_cmds:quantize",
    "prune": "weightcli.cli.transform_cmds:prune",
    "cluster": "weightcli.cli.transform_cmds:cluster",
    "apply": "weightcli.cli.transform_cmds:apply_cmd",
    "diff": "weightcli.cli.compare_cmds:diff",
    "verify": "weightcli.cli.compare_cmds:verify",
    "transplant": "weightcli.cli.transplant_cmd:transplant",
    "merge": "weightcli.cli.merge_cmd:merge",
    "lora": "weightcli.cli.lora_cmd:lora",
    "migrate": "weightcli.cli.migrate_cmd:migrate",
    "set": "weightcli.cli.edit_cmds:set_cmd",
    "dump": "weightcli.cli.edit_cmds:dump_cmd",
    "freeze": "weightcli.cli.edit_cmds:freeze_cmd",
    "reinit": "weightcli.cli.edit_cmds:reinit_cmd",
    "export": "weightcli.cli.export_cmd:export",
    "strip": "weightcli.cli.edit_cmds:strip_cmd",
}


class WeightcliGroup(click.Group):
    """Loads commands lazily; turns library errors into one line on stderr and exit code 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command

    def invoke(self, ctx: click.Context) -> object:
        before = os.environ.get("WEIGHTCLI_DEBUG")
        try:
            return self._invoke(ctx)
        finally:  # (a run in-process, a test's, leaves the environment as it found it)
            if before is None:
                os.environ.pop("WEIGHTCLI_DEBUG", None)
            else:
                os.environ["WEIGHTCLI_DEBUG"] = before

    def _invoke(self, ctx: click.Context) -> object:
        rest = (*ctx.protected_args, *ctx.args)
        debug = "--debug" in rest or bool(ctx.params.get("debug"))
        if debug:
            os.environ["WEIGHTCLI_DEBUG"] = "1"  # framework warnings shown (workers inherit it)
        import numpy

        # NaN/Inf in checkpoints are data here, reported in the tables: numpy's warnings
        # about them are noise on stderr (worker processes inherit this setting).
        numpy.seterr(all="ignore")
        try:
            if ctx.params.get("storage_options") and not any("://" in a for a in rest):
                raise click.UsageError(  # an option that cannot apply: an error, not ignored
                    "--storage-option applies to object storage paths (s3://, gs://, ...); "
                    "no argument here is one",
                    ctx,
                )
            return super().invoke(ctx)
        except click.UsageError as exc:
            if debug:
                raise
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            number = re.search(r"No such option '(-[\d.][\d.eE+-]*)'", exc.format_message())
            if number is not None:  # a negative FACTOR reads as an option to click
                hint = f" (a negative number is a value: write --factor {number.group(1)}, or -- {number.group(1)})"
            # One line on stderr: click lists choices one per line ("Choose from:\n\t...").
            message = re.sub(r"\s*\n\s*", " ", exc.format_message().strip())
            click.echo(f"weightcli: error: {message}{hint}", err=True)
            ctx.exit(2)
        except WeightcliError as exc:
            if debug:
                raise
            from weightcli.cli.options import spell
            from weightcli.stores.remote import as_urls

            click.echo(f"weightcli: error: {one_line(as_urls(exc.render(spell)))}", err=True)
            ctx.exit(exc.exit_code)
        except (KeyboardInterrupt, Terminated) as exc:
            # Every writer has removed its temporary files on the way up.
            signal_no = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
            click.echo(f"weightcli: {signal_no.name}: stopped, nothing written", err=True)
            ctx.exit(128 + signal_no)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, as a command killed by
            # SIGPIPE would (exit 128 + 13).
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(128 + signal.SIGPIPE)
        except OSError as exc:
            if debug:
                raise
            click.echo(f"weightcli: error: {one_line(os_error(exc))}", err=True)
            ctx.exit(ExitCode.ERROR)
        except RecursionError:
            if debug:
                raise
            click.echo("weightcli: error: the input is nested too deeply to read", err=True)
            ctx.exit(2)
        except Exception as exc:
            if debug:
                raise
            line = one_line((str(exc).strip().splitlines() or [""])[0], 300)
            click.echo(
                f"weightcli: internal error (a bug in weightcli, please report it; --debug "
                f"shows the traceback): {type(exc).__name__}: {line}",
                err=True,
            )
            ctx.exit(ExitCode.INTERNAL)


@click.group(cls=WeightcliGroup, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="weightcli")
@click.option("--debug", is_flag=True, help="Show a traceback for errors (for bug reports).")
@click.option(
    "--storage-option",
    "storage_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="For s3://, gs://, ... paths: an fsspec option (repeatable; dotted keys nest, "
    "VALUE parsed as JSON when it can be).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Stop a model's run after this many seconds (exit 2 for that model).",
)
@click.option(
    "--max-memory",
    metavar="SIZE",
    help="Address-space limit for a model's run, e.g. 4G or 512M (exit 2 for a model "
    "that needs more).",
)
@click.pass_context
def cli(
    ctx: click.Context,
    debug: bool,
    storage_options: tuple[str, ...],
    timeout: float | None,
    max_memory: str | None,
) -> None:
    """Weight surgery on saved TensorFlow/Keras models.

    Reads Keras .h5 (Keras 1/2/3, full model or weights only), Keras 3 .keras and
    .weights.h5, TensorFlow SavedModel directories and TF checkpoints, on disk or in
    object storage (s3://, gs://, ... with pip install 'weightcli[remote]').
    Transforms rewrite only the tensors they change and write a new checkpoint of
    the same format.

    \b
    Exit codes (a batch ends with the worst of its models'):
      0  success
      1  a check failed: verify, diff found differences, inspect
         --fail-on-nonfinite, apply --strict
      2  usage, input or output error: one line on stderr, nothing written (a
         damaged file that crashes a native library, --timeout, --max-memory too:
         each model runs in a child process)
      3  internal error: a bug in weightcli (--debug shows the traceback)
      130/143  stopped by SIGINT/SIGTERM, nothing written

    \b
    Examples:
      weightcli inspect model.h5
      weightcli clip model.keras --nonfinite zero -o repaired.keras
      weightcli diff old.h5 new.h5 --atol 1e-6
      weightcli inspect s3://bucket/models/model.keras --no-stats
      weightcli --timeout 600 --max-memory 8G verify -r exports/ --no-load
    """
    if storage_options:
        from weightcli.stores.remote import set_storage_options

        set_storage_options(storage_options)
    ctx.meta["weightcli.timeout"] = timeout
    ctx.meta["weightcli.max_memory"] = parse_size(max_memory) if max_memory else None


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``4G``, ``512M``, ``1.5G``, ``100000000`` (bytes; K/M/G/T are powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise click.BadParameter(
            f"{text!r}: a size such as 4G, 512M or 1000000", param_hint="--max-memory"
        )
    size = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if size < 64 << 20:
        raise click.BadParameter(f"{text!r}: at least 64M", param_hint="--max-memory")
    return size


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: now clean up
    raise Terminated()


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# Blocks and their temporaries are a few MiB: below this, freed memory is kept for reuse.
KEEP_FREED_BYTES = 64 << 20


def keep_freed_memory() -> None:
    """Let glibc reuse freed blocks instead of returning them to the kernel.

    By default glibc maps each array of a few MiB afresh and unmaps it when freed, and
    the read-ahead thread's arena gives its memory back at once: every block then
    page-faults on brand-new pages, which cost more than the copying (measured on the
    1 GB ``scale``: 1.8 s with fresh pages, 1.1 s reusing them). Keeping up to 64 MiB
    of freed memory bounds what this can cost. Only the CLI process (and its workers)
    set this; importing the library changes nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, KEEP_FREED_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, 2 * KEEP_FREED_BYTES)
    except (OSError, AttributeError):  # not glibc (musl): its own policy applies
        pass


def main(argv: list[str] | None = None) -> None:
    """Console entry point.

    Once a command has finished (outputs committed and closed, exit code decided) the
    process ends without the interpreter's finalisation of numpy, h5py and HDF5
    (about 30 ms a run here, more with TensorFlow loaded): a one-shot command gains
    nothing from it.
    """
    signal.signal(signal.SIGTERM, _terminate)
    keep_freed_memory()
    try:
        cli.main(args=argv, prog_name="weightcli", obj={"isolate": True})
    except SystemExit as exc:
        if exc.code is not None and not isinstance(exc.code, int):
            raise
        if sys.getprofile() is not None or sys.gettrace() is not None:
            raise  # a profiler, debugger or coverage run: let it see the normal exit
        # Exit handlers still run; only the interpreter's own finalisation is skipped.
        run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
        if run_exit_handlers is not None:
            run_exit_handlers()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe (| head)
                stream.flush()
        os._exit(exc.code or 0)
