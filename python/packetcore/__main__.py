"""``python -m packetcore serve|fetch|demo``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: python -m packetcore {serve,fetch,demo} [options]

  serve   run the exchange (same as packetcore-serve)
  fetch   fetch a feed into output.json (same as packetcore-fetch)
  demo    start a server on a free port, fetch from it, stop it

'python -m packetcore COMMAND --help' explains each command's options."""


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the command named by the first argument."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "serve":
        from .cli.serve import main as serve

        return serve(rest)
    if command == "fetch":
        from .cli.fetch import main as fetch

        return fetch(rest)
    if command == "demo":
        from .cli.demo import main as demo

        return demo(rest)
    print(f"python -m packetcore: error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
