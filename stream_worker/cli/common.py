"""What every command shares: the `app`, loading settings, `fail`, exit codes, logging, signals.

A mistake ends in one sentence on stderr and exit code 2 (usage) or 1 (runtime); the traceback
only with --verbose. Exceptions whose message is that sentence carry `exit_code`.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import threading
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from stream_worker.config import ConfigError, Settings, load_settings

# Exit codes: 2 = a usage error (a bad option, setting or input file), 1 = a runtime error
# (Kafka away, a taken port, a failed round), 130 = interrupted (Ctrl+C) before finishing.
USAGE = 2


RUNTIME = 1


INTERRUPTED = 130


class _App(typer.Typer):
    """typer.Typer with one rule for every command: a mistake ends in one sentence on stderr
    and exit code 2 (usage) or 1 (runtime); the traceback only with --verbose."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            if verbose_on():
                raise
            message, code = explain(exc)
            print_error(message)
            sys.exit(code)


app = _App(
    help="A streaming recommender on Kafka with generative models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# A pipe or a log file has no width: rich would assume 80 columns and cut or wrap lines there.
_TTY = sys.stderr.isatty()


console = Console(stderr=True, width=None if _TTY else 120, soft_wrap=not _TTY)


_VERBOSE = {"on": False}


Bootstrap = Annotated[
    str | None,
    typer.Option(
        "--bootstrap-servers", "-b", help="Kafka host:port (default: STREAMREC_BOOTSTRAP_SERVERS or 127.0.0.1:9092)"
    ),
]


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs, librdkafka's log and tracebacks")]


def _version(value: bool) -> None:
    if value:
        print(f"streamrec {metadata.version('streamrec')}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Verbose = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """A streaming recommender on Kafka with generative models."""
    _VERBOSE["on"] = _VERBOSE["on"] or verbose


def verbose_on() -> bool:
    return _VERBOSE["on"] or any(arg in ("--verbose", "-v") for arg in sys.argv[1:])


def explain(exc: BaseException) -> tuple[str, int]:
    """The one sentence and exit code for an exception that reached the command line."""
    # Exceptions whose message is already the one sentence a person needs carry their exit code.
    code = getattr(type(exc), "exit_code", None)
    if code in (USAGE, RUNTIME):
        return str(exc), code
    if isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError) and exc.filename:
        return f"{exc.filename}: {(exc.strerror or 'cannot open').lower()} — check the path", USAGE
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"a port this command listens on is taken ({exc.strerror}) — stop the other process", RUNTIME
    name = type(exc).__name__
    return f"unexpected {name}: {exc} — run again with --verbose for the traceback", RUNTIME


def print_error(message: str) -> None:
    console.print(f"[red]{escape(message)}[/red]", soft_wrap=True, highlight=False)


def cli_settings(verbose: bool = False, **overrides: Any) -> Settings:
    from stream_worker.kafka.check import quiet

    try:
        return quiet(load_settings(**overrides), verbose or verbose_on())
    except ConfigError as exc:
        fail(str(exc), USAGE)


def fail(message: str, code: int) -> NoReturn:
    """One sentence on stderr, no traceback, and a non-zero exit."""
    print_error(message)
    raise typer.Exit(code)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose or verbose_on() else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def stop_on_signals(stop: threading.Event, second: str = "interrupted again: exiting now") -> None:
    """SIGTERM/SIGINT only ask the work to stop; a second Ctrl+C exits at once (code 130),
    after printing `second` (what is lost), without running any cleanup that could claim
    a clean stop."""

    def handler(signum: int, _frame: object) -> None:
        console.print(f"{signal.Signals(signum).name}: finishing the work in flight, then stopping")
        stop.set()
        signal.signal(signal.SIGINT, again)

    def again(_signum: int, _frame: object) -> None:
        console.print(second)
        sys.stderr.flush()
        os._exit(INTERRUPTED)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def shown(path: Path) -> str:
    """`path` relative to the current folder when it lies below it (shorter, and no machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def need_kafka(settings: Settings, *topics: str) -> None:
    """One bounded check that the cluster answers and `topics` exist (else one sentence, exit 1/2)."""
    from stream_worker.kafka.check import check_kafka

    check_kafka(settings, topics)


def need_model_kind(kind: str, where: str) -> None:
    from models.base import REGISTRY

    if kind not in REGISTRY:
        fail(f"{where}={kind} is not a model kind; choose one of {', '.join(sorted(REGISTRY))}", USAGE)


def need_free_port(host: str, port: int, variable: str, option: str | None = None) -> None:
    """Fail with the port's name when another process listens there (before any slow start-up)."""
    if not port:
        return
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            how = f"{option} N or {variable}=N" if option else f"{variable}=N"
            fail(
                f"port {port} ({variable}) on {host} is taken ({exc.strerror}) — another worker or trainer? "
                f"stop it, or choose another port with {how} (0 = no HTTP endpoint)",
                RUNTIME,
            )
