"""The ``resume`` command line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from resume import __version__
from resume.cli import db, serve, status, stream, upload
from resume.errors import ResumeError, UsageError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `yes | head`

COMMANDS = (upload, serve, status, stream, db)
VERBOSE_HELP = "log more (repeat for debug); accepted before or after the command"


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one subcommand per module in ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="resume",
        description=(
            "Move data over networks that fail: resumable, verified uploads and a "
            "reconnecting WebSocket stream, with their state in a local SQLite store."
        ),
    )
    parser.add_argument("--version", action="version", version=f"resume {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(subparsers)
    _verbose_everywhere(subparsers)
    return parser


def _verbose_everywhere(subparsers: argparse._SubParsersAction) -> None:
    """``-v`` after any (sub)command too: ``resume upload -v ...`` as well as ``resume -v upload``."""
    for command in subparsers.choices.values():
        # SUPPRESS: absent after the command, the count given before it stands.
        command.add_argument(
            "-v", "--verbose", action="count", default=argparse.SUPPRESS, help=VERBOSE_HELP
        )
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _verbose_everywhere(action)


class _OneLineHandler(logging.Handler):
    """Warnings as ``resume: warning: ...`` lines on stderr, clear of a progress line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            clear = "\r\033[K" if sys.stderr.isatty() else ""
            sys.stderr.write(f"{clear}resume: {record.levelname.lower()}: {record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def _configure_logging(verbose: int) -> None:
    if verbose:
        from resume import logs

        logging.basicConfig(
            level=logging.INFO if verbose == 1 else logging.DEBUG,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        logs.quiet_third_party(unless=verbose >= 2)  # -v: resume's INFO, not Alembic's
    else:
        root = logging.getLogger()
        root.setLevel(logging.WARNING)
        root.addHandler(_OneLineHandler())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``resume`` command; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return int(args.run(args))
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except ResumeError as exc:
        _error(str(exc))
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (`resume status --json | head`): stop quietly. Point stdout
        # at /dev/null so the interpreter's final flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: one line, the traceback only when asked for
        if args.verbose:
            logging.getLogger("resume").exception("internal error")
        _error(
            f"internal error: {type(exc).__name__}: {exc} (run with -v for the traceback, "
            "and please report it)"
        )
        return EXIT_FAILED


def _error(message: str) -> None:
    # The first line only: messages that quote a server or a driver must not run on.
    line = message.strip().splitlines()[0] if message.strip() else "failed"
    with contextlib.suppress(BrokenPipeError):
        print(f"resume: error: {line}", file=sys.stderr, flush=True)
