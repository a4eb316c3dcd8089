"""The package's Python API as docs/api.md shows it: names importable, keywords accepted."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from fakes import FakeBaseServer
from packetcore.io.feeds import book

import packetcore
from packetcore import FetchError, FetchOptions, TextParser, fetch, text_rows

FAST = {"timeout": 0.5, "backoff": 0.0, "hello_timeout": 0.1}


def test_the_documented_names_are_importable_and_load_lazily() -> None:
    # The names the docs use come from the package itself; importing the package
    # loads no numpy (the commands start fast), asking for a name loads what it needs.
    script = (
        "import sys, packetcore\n"
        "assert 'numpy' not in sys.modules, 'numpy loaded by the import'\n"
        "from packetcore import FetchOptions, TextParser, text_rows\n"
        "assert 'numpy' in sys.modules\n"
        "print(sorted(set(packetcore.__all__) - set(dir(packetcore))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    for name in ("FetchOptions", "TextParser", "text_rows"):
        assert name in packetcore.__all__


def test_text_rows_and_text_parser_round_trip() -> None:
    packets = book()
    rows = text_rows(packets, "ndjson")
    parser = TextParser("ndjson")
    parsed = packetcore.Packets.concat([parser.feed(rows), parser.close()])
    assert parsed.to_records() == packets.to_records()


def test_every_fetch_options_field_is_a_keyword_of_fetch() -> None:
    # docs/api.md: "Every option of the command: FetchOptions' fields and strict=True".
    options = {f.name: getattr(FetchOptions(), f.name) for f in dataclasses.fields(FetchOptions)}
    options.update(FAST, port=1, retries=0)  # nothing listens on port 1: no packet at all
    with pytest.raises(FetchError):
        fetch(**options)


def test_strict_raises_where_the_command_exits_4() -> None:
    with FakeBaseServer(conflict=True, pause=0.0, seed=3) as server:
        result = fetch(port=server.port, **FAST)
        assert result.complete and result.untrusted[0] > 0  # the lenient fetch settles
        with pytest.raises(FetchError, match=r"strict: the server sent \d+ conflicting"):
            fetch(port=server.port, strict=True, **FAST)
