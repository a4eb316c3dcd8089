"""``python -m packetcore serve|fetch|proxy|demo``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

PROG = "python -m packetcore"
USAGE = """usage: python -m packetcore {serve,fetch,proxy,demo} [options]

  serve   run the exchange (same as packetcore-serve)
  fetch   fetch a feed into output.json (same as packetcore-fetch)
  proxy   forward to a server with faults (same as packetcore-proxy)
  demo    start a server on a free port, fetch from it, stop it

'python -m packetcore COMMAND --help' explains each command's options."""


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the command named by the first argument."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        # No command is a usage error: the usage goes where errors go.
        print(USAGE, file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    # Each command's usage and errors name it as it was typed.
    prog = f"{PROG} {command}"
    if command == "serve":
        from .cli.serve import main as serve

        return serve(rest, prog=prog)
    if command == "fetch":
        from .cli.fetch import main as fetch

        return fetch(rest, prog=prog)
    if command == "proxy":
        from .cli.proxy import main as proxy

        return proxy(rest, prog=prog)
    if command == "demo":
        from .cli.demo import main as demo

        return demo(rest, prog=prog)
    print(f"{PROG}: error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
