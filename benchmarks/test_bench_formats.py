"""Text forms: the compiled engine against its twin and orjson, for 1,000,000 packets.

``text_rows`` is timed against ``orjson.dumps`` of the records, ``TextParser`` against
``orjson.loads`` of the same document (which builds a dict per record; ours builds none).
"""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
from packetcore.io import formats
from packetcore.packets import Packets

from packetcore.engine import _engine, _pure

ENGINES = {"c": _engine, "py": _pure}
PURE_ROUNDS = 3


def framed(rows: bytes) -> bytes:
    return b"[\n" + rows + b"\n]\n"


@pytest.fixture(scope="module")
def document(packets: Packets) -> bytes:
    return framed(_engine.text_rows(packets, "json"))


def parse_all(engine: Any, doc: bytes) -> Packets:
    parser = engine.TextParser("json")
    return parser.feed(doc) + parser.close()


@pytest.mark.parametrize("impl", ["c", "py", "orjson"])
def test_text_rows(benchmark: Any, impl: str, packets: Packets, records: Any) -> None:
    benchmark.group = "text_rows"
    if impl == "orjson":
        out = benchmark(orjson.dumps, records)
        assert orjson.loads(out)[-1] == records[-1]
        return
    fn = ENGINES[impl].text_rows
    if impl == "py":
        out = benchmark.pedantic(fn, (packets, "json"), rounds=PURE_ROUNDS, iterations=1)
    else:
        out = benchmark(fn, packets, "json")
    assert orjson.loads(framed(out))[-1] == records[-1]


@pytest.mark.parametrize("impl", ["c", "py", "orjson"])
def test_text_parser(benchmark: Any, impl: str, packets: Packets, document: bytes) -> None:
    benchmark.group = "text_parse"
    if impl == "orjson":
        out = benchmark(orjson.loads, document)
        assert len(out) == len(packets)
        return
    engine = ENGINES[impl]
    if impl == "py":
        got = benchmark.pedantic(
            parse_all, (engine, document), rounds=PURE_ROUNDS, iterations=1, warmup_rounds=0
        )
    else:
        got = benchmark(parse_all, engine, document)
    assert got == packets


def write_document(packets: Packets, form: str) -> int:
    """Write one whole document through the format layer, as a fetch's output does."""
    stream = io.BytesIO()
    writer = formats.open_writer(stream, form)
    writer.write(packets)
    writer.close()
    return len(stream.getvalue())


@pytest.mark.parametrize("form", ["json", "csv", "bin"])
def test_format_write(benchmark: Any, form: str, packets: Packets) -> None:
    """The writers, symbol check (``engine.valid_symbols``) included, compiled engine."""
    benchmark.group = f"format_write_{form}"
    assert benchmark(write_document, packets, form) > len(packets)


@pytest.mark.parametrize("form", ["json", "csv"])
def test_format_parse(benchmark: Any, form: str, packets: Packets) -> None:
    """The compiled parser of each text form, whose symbol check is per character."""
    benchmark.group = f"format_parse_{form}"
    stream = io.BytesIO()
    writer = formats.open_writer(stream, form)
    writer.write(packets)
    writer.close()
    doc = stream.getvalue()

    def parse() -> Packets:
        parser = _engine.TextParser(form)
        return parser.feed(doc) + parser.close()

    assert benchmark(parse) == packets
