"""How a ``ddim`` command ends, and how its help reads: shared by the ``ddim`` group
(:mod:`ddim.cli`) and ``python -m ddim.train`` (:mod:`ddim.train.command`), which runs
without the CLI.

Every failure a user can cause ends the same way: one line ``error: ...`` on stderr and
exit status 2 (130 when interrupted). :class:`OneLineErrors` turns click's usage errors and
the library's ``ValueError``/``OSError``/``ImportError``/``RuntimeError`` into that line;
set ``DDIM_DEBUG=1`` to see the traceback instead. This module imports click only, so
``--help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
USER_ERRORS = (ValueError, OSError, ImportError, RuntimeError)
#: ``-h`` as well as ``--help``, and help text up to 100 columns wide.
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def one_line(message: str) -> str:
    """``message`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(message.split())


def describe(error: BaseException) -> str:
    """A one-line description of a library error for the user."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    return str(error).strip() or type(error).__name__


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: message`` to stderr and exit."""
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(code)


class OneLineErrors(click.Command):
    """A click command (or, mixed in first, a group) whose failures are one ``error:`` line
    and exit status 2."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command like click does, reporting every failure as one line."""
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.format_message())
            sys.exit(0)
        except (click.exceptions.Abort, KeyboardInterrupt):
            fail("interrupted", EXIT_INTERRUPTED)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            fail(e.format_message() + hint)
        except click.ClickException as e:
            fail(e.format_message())
        except USER_ERRORS as e:
            if os.environ.get("DDIM_DEBUG"):
                raise
            fail(describe(e))
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)
