"""A small client of the base protocol, for grading by packetcore-check in the tests.

Correct by default: it frames 17-byte packets from a byte stream, streams until a pass
brings nothing new (at least three passes, so a lost last packet is found), asks for the
gaps it can name by resend (1..127) and streams again for the rest, keeps one copy of
each sequence, checks each packet's fields, takes the feed's length from sequences seen
in two passes (a far-ahead copy never seen again is a corrupted one), retries a
connection that fails or stalls, and writes the records in sequence order.  Each
``--break`` makes it fail one way:

* ``split``: expects whole packets in each read (TCP may split them): gives up at the
  first read that is not, and writes nothing
* ``duplicates``: keeps every copy it gets
* ``tail``: trusts one stream's highest sequence
* ``hang``: never ends
* ``crash``: dies with a traceback after connecting
* ``nothing``: exits 0 without writing
* ``unsorted``: writes records in the order they came

Usage: feedclient.py [--port N] [--output PATH] [--break KIND]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import string
import struct
import time

PACKET = struct.Struct(">4scii")
SIZE = 17
PRINTABLE = set(string.printable.encode()) - set(b"\t\n\r\x0b\x0c")


def parse(data: bytes, broken: str | None) -> tuple[list[tuple[int, dict[str, object]]], bytes]:
    """Return the whole packets of ``data`` and the rest."""
    n = len(data) // SIZE
    out = []
    for i in range(n):
        raw = data[i * SIZE : (i + 1) * SIZE]
        symbol, side, quantity, price = PACKET.unpack_from(raw)
        sequence = int.from_bytes(raw[13:17], "big")
        text = symbol.rstrip(b"\0")
        if broken is None and (
            not text or not set(text) <= PRINTABLE or side not in b"BS" or sequence < 1
        ):
            continue  # a corrupted packet: asked for again like a lost one
        out.append(
            (
                sequence,
                {
                    "symbol": text.decode("latin-1"),
                    "buysellindicator": side.decode("latin-1"),
                    "quantity": quantity,
                    "price": price,
                    "packetSequence": sequence,
                },
            )
        )
    if broken == "split" and len(data) % SIZE:
        raise SystemExit(0)  # "a packet is 17 bytes": not a read, on a real network
    return out, data[n * SIZE :]


def connect(port: int, timeout: float) -> socket.socket:
    for attempt in range(20):
        try:
            sock = socket.create_connection(("localhost", port), timeout=timeout)
            return sock
        except OSError:
            time.sleep(0.05 * (attempt + 1))
    raise SystemExit("cannot connect")


def stream(port: int, broken: str | None) -> tuple[list[tuple[int, dict[str, object]]], bool]:
    """Stream all once; return the packets and whether the stream ended cleanly."""
    got: list[tuple[int, dict[str, object]]] = []
    rest = b""
    try:
        with connect(port, 3.0) as sock:
            sock.sendall(bytes([1, 0]))
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                packets, rest = parse(rest + chunk if broken != "split" else chunk, broken)
                got += packets
    except OSError:
        return got, False
    return got, not rest


def resend(
    port: int, sequences: list[int], broken: str | None
) -> list[tuple[int, dict[str, object]]]:
    got: list[tuple[int, dict[str, object]]] = []
    try:
        with connect(port, 2.0) as sock:
            sock.sendall(b"".join(bytes([2, s]) for s in sequences))
            rest = b""
            want = set(sequences)
            while want:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                packets, rest = parse(rest + chunk, broken)
                got += packets
                want -= {s for s, _ in packets}
    except OSError:
        pass
    return got


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("PACKETCORE_PORT", 3000)))
    parser.add_argument("--output", default="output.json")
    parser.add_argument("--break", dest="broken", default=None)
    args = parser.parse_args()
    broken = args.broken
    if broken == "hang":
        while True:
            time.sleep(1)
    held: dict[int, dict[str, object]] = {}
    copies: dict[int, list[dict[str, object]]] = {}  # --break duplicates: a pass's copies
    passes = quiet = 0
    passes_seen: dict[int, int] = {}
    while True:
        packets, clean = stream(args.port, broken)
        if broken == "crash":
            raise RuntimeError("the client crashed on purpose")
        before = (len(held), max(held, default=0))
        fresh: dict[int, list[dict[str, object]]] = {}
        for sequence, record in packets:
            if sequence not in held or sequence in fresh:  # every copy within this pass
                fresh.setdefault(sequence, []).append(record)
            held.setdefault(sequence, record)
        copies.update(fresh)
        for sequence in {s for s, _ in packets}:
            passes_seen[sequence] = passes_seen.get(sequence, 0) + 1
        passes += 1
        if broken == "tail":
            break
        quiet = quiet + 1 if clean and (len(held), max(held, default=0)) == before else 0
        if passes >= 3 and quiet >= 1 and clean:
            break
        if passes > 60:
            raise SystemExit("the feed never settled")
    # The last sequence: the highest seen in two passes (a single far-ahead copy that
    # more passes never show again is a corrupted one).
    while held and passes_seen[max(held)] < 2:
        top = max(held)
        for _ in range(4):
            for sequence in {q for q, _ in stream(args.port, broken)[0]}:
                passes_seen[sequence] = passes_seen.get(sequence, 0) + 1
            if passes_seen[top] >= 2:
                break
        else:
            del held[top]
            copies.pop(top, None)
    last = max(held, default=0)
    for _ in range(60):
        missing = [s for s in range(1, last + 1) if s not in held]
        if not missing:
            break
        named = [s for s in missing if s <= 127]
        packets = resend(args.port, named, broken) if named else stream(args.port, broken)[0]
        for sequence, record in packets:
            copies.setdefault(sequence, [record])
            held.setdefault(sequence, record)
    if broken == "nothing":
        return
    if broken == "duplicates":
        records = [record for s in sorted(copies) for record in copies[s]]
    elif broken == "unsorted":
        records = list(held.values())[::-1]
    else:
        records = [held[s] for s in sorted(held)]
    with open(args.output + ".part", "w") as file:
        json.dump(records, file, indent=2)
    os.replace(args.output + ".part", args.output)


if __name__ == "__main__":
    main()
