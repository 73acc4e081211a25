"""The console entry point: runs the typer app and turns every failure the user can fix into one line
and its exit code."""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from ..errors import EdgetlError, Terminated
from .app import app
from .frameworks import quiet_frameworks
from .numbers import finite_floats
from .signals import _drop_interrupted_finalizers, _sigterm_as_exception


def _usage_error_types() -> tuple[type, ...]:
    # typer >= 0.22 vendors click as typer._click; older typer uses click itself.
    try:
        from typer._click.exceptions import ClickException
    except ImportError:
        from click import ClickException
    return (ClickException,)


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point: one line and a non-zero code for every failure the user can fix."""
    with _sigterm_as_exception():
        return _main(argv)


def _main(argv: Optional[list[str]] = None) -> int:
    quiet_frameworks()
    command = typer.main.get_command(app)
    finite_floats(command)  # NaN and infinities refused by every float option
    try:
        result = _invoke(command, argv if argv is not None else sys.argv[1:])
        if result == 130:  # Ctrl-C: typer raises Exit(130), which click returns in non-standalone mode
            _drop_interrupted_finalizers()
            typer.echo("edgetl: interrupted; nothing half-written was left", err=True)
        return result if isinstance(result, int) else 0
    except Terminated:
        _drop_interrupted_finalizers()
        typer.echo("edgetl: terminated (SIGTERM); nothing half-written was left", err=True)
        return 143
    except typer.Exit as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # typer turns Ctrl-C into Exit(130)
            _drop_interrupted_finalizers()
            typer.echo("edgetl: interrupted; nothing half-written was left", err=True)
        return exc.exit_code
    except typer.Abort:
        typer.echo("edgetl: aborted", err=True)
        return 130
    except _usage_error_types() as exc:  # bad arguments: one line, exit 2
        typer.echo(f"edgetl: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except EdgetlError as exc:
        typer.echo(f"edgetl: error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        _drop_interrupted_finalizers()
        typer.echo("edgetl: interrupted; nothing half-written was left", err=True)
        return 130
    except OSError as exc:  # disk full, permission, read-only mid-write: one line; other OSErrors are bugs
        from ..writable import describe_os_error

        message = describe_os_error(exc)
        if message is None:
            raise
        typer.echo(f"edgetl: error: {message}", err=True)
        return 2


def _invoke(command, args: list[str]):
    try:
        return command.main(args=args, prog_name="edgetl", standalone_mode=False)
    except SystemError as exc:
        # A signal's exception raised inside a native extension's own signal check (Ray's ray.wait
        # runs PyErr_CheckSignals) comes out wrapped: "returned a result with an exception set".
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, (Terminated, KeyboardInterrupt)):
            raise cause from None
        raise


def entry() -> None:
    code = main()
    if code in (130, 143):  # interrupted: skip interpreter finalization for the same reason
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
