"""``packetcore serve|fetch|proxy|check|info|convert|demo`` (also ``python -m packetcore ...``)."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Sequence

PROG = "python -m packetcore"
USAGE = """usage: {prog} {{serve,fetch,proxy,check,info,convert,demo}} [options]
       {prog} --version

  serve    run the exchange (same as packetcore-serve)
  fetch    fetch a feed into output.json (same as packetcore-fetch)
  proxy    forward to a server with faults (same as packetcore-proxy)
  check    grade a client or a server of the protocol (same as packetcore-check)
  info     count, sequences, gaps and format of a feed file (no server)
  convert  convert a feed file from any format to any other (no server)
  demo     start a server on a free port, fetch from it, stop it

'{prog} COMMAND --help' explains each command's options."""
#: The commands with no program of their own: only ``packetcore COMMAND``.
SUBCOMMANDS = ("info", "convert", "demo")


#: The commands: their module under packetcore.cli and their name as a program.
COMMANDS = {
    "serve": "packetcore-serve",
    "fetch": "packetcore-fetch",
    "proxy": "packetcore-proxy",
    "check": "packetcore-check",
}


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Dispatch to the command named by the first argument (``prog``: how it was typed)."""
    args = list(sys.argv[1:] if argv is None else argv)
    usage = USAGE.format(prog=prog)
    if not args:
        # No command is a usage error: the usage goes where errors go.
        return _usage_error(usage)
    if args[0] in ("-h", "--help"):
        print(usage)
        return 0
    if args[0] == "--version":
        from . import __version__

        print(f"{prog} {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command not in (*COMMANDS, *SUBCOMMANDS):
        return _usage_error(f"{prog}: error: unknown command {command!r}\n\n{usage}")
    # Each command's usage and errors name it as it was typed.  Called with no argv,
    # this is the process's command (python -m packetcore): its signals are the command's.
    return _run(command, rest, f"{prog} {command}", owner=argv is None)


def _usage_error(message: str) -> int:
    """Print ``message`` to stderr; return the usage error's status."""
    from .cli.exits import EXIT_USAGE

    print(message, file=sys.stderr)
    return EXIT_USAGE


def packetcore() -> int:
    """Run ``packetcore COMMAND`` (its console script)."""
    return main(prog="packetcore")


def _run(command: str, argv: Sequence[str], prog: str, *, owner: bool = True) -> int:
    """Load ``command`` and run it; a signal at any moment is handled by cli.signals' rule."""
    # Before the command runs, numpy and the engine load (a second, on a busy machine),
    # and before that the rule itself (cli.signals): the stop signals are held from the
    # first line on, and the command's handler is in place before they are let through,
    # so that no signal ever meets the default action (SIGTERM: killed without a word) or
    # Python's (a KeyboardInterrupt traceback).  Held here with the signal module itself:
    # importing the rule is part of the window it would close.
    import signal

    hold = getattr(signal, "pthread_sigmask", None)  # not on Windows
    previous = hold(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}) if hold else None
    try:
        try:
            from .cli import signals  # the rule, import-light: not the command yet

            if owner:
                _standard_descriptors_open()
            module = importlib.import_module(f"packetcore.cli.{command}")
            importlib.import_module("numpy")
            if owner:  # not when called in-process (a test): that process's signals are its own
                signals.take_over()  # for the rest of the process: after the end, ignored
        finally:
            if hold is not None and previous is not None:
                hold(signal.SIG_SETMASK, previous)  # what was held is delivered now
        code: int = module.main(argv, prog=prog)
    except KeyboardInterrupt as exc:  # held until here, or before the command's run()
        from .cli import signals

        interrupted = signals.stopped_by(exc)
        print(f"{prog}: {interrupted.what}", file=sys.stderr)
        code = interrupted.status
    if not owner:
        return code
    signals.settle()  # said and done: ignored until the process has exited
    return _exit_now_if_busy(code)


def _standard_descriptors_open() -> None:
    """Put /dev/null on descriptors 0, 1 and 2 where the command was started without them.

    Otherwise the first socket the command opens takes the number: a fetch started with
    ``>&-`` would write its records into a connection to the server.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one


def _exit_now_if_busy(code: int) -> int:
    """Return ``code``, or exit at once if a thread still works (a writer a reader left).

    A daemon thread still inside a C extension (pyarrow writing parquet, a write to a
    pipe nobody reads) while the interpreter finalizes can crash it (SIGSEGV) or hang
    it: with the command's outcome reported, the process ends without finalizing.
    """
    import threading

    busy = [t for t in threading.enumerate() if t.daemon and t.is_alive()]
    if not busy:
        return code
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def serve() -> int:
    """Run ``packetcore-serve`` (its console script)."""
    return _run("serve", sys.argv[1:], COMMANDS["serve"])


def fetch() -> int:
    """Run ``packetcore-fetch`` (its console script)."""
    return _run("fetch", sys.argv[1:], COMMANDS["fetch"])


def proxy() -> int:
    """Run ``packetcore-proxy`` (its console script)."""
    return _run("proxy", sys.argv[1:], COMMANDS["proxy"])


def check() -> int:
    """Run ``packetcore-check`` (its console script)."""
    return _run("check", sys.argv[1:], COMMANDS["check"])


if __name__ == "__main__":
    sys.exit(main())
