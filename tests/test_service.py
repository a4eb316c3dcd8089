"""net.service.Service: the one start/stop of the server and the proxy."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest
from packetcore.faults.proxy import Proxy
from packetcore.net.service import Service
from packetcore.server.server import Server
from serverutil import TIMEOUT


class _Holder(Service):
    """Holds every connection open until it is stopped; notes what happened to them."""

    kind = "holder"

    def __init__(self) -> None:
        super().__init__("127.0.0.1", 0)
        self.held = 0
        self.cancelled = 0
        self.said: list[str] = []
        self.three = asyncio.Event()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.held += 1
        if self.held == 3:
            self.three.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            writer.transport.abort()

    def _listening(self) -> None:
        self.said.append(f"listening {self.port}")

    def _closed(self) -> None:
        self.said.append("closed")


def test_a_service_tracks_its_connections_and_ends_them_on_stop() -> None:
    async def main() -> _Holder:
        holder = await _Holder().start_async()
        with pytest.raises(RuntimeError, match="the holder was already started"):
            await holder.start_async()
        clients = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", holder.port)
            clients.append((reader, writer))
        await asyncio.wait_for(holder.three.wait(), TIMEOUT)
        await asyncio.wait_for(holder.stop_async(), TIMEOUT)
        await holder.stop_async()  # idempotent
        for reader, writer in clients:
            # Each connection ended: the server's side is gone.
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
            writer.close()
        return holder

    holder = asyncio.run(main())
    assert (holder.held, holder.cancelled) == (3, 3)
    assert holder.said == [f"listening {holder.port}", "closed"]
    assert holder.addresses and holder.addresses[0][1] == holder.port


def test_a_stopped_service_refuses_and_a_thread_runs_one() -> None:
    with _Holder() as holder:
        port = holder.port
        assert holder.said == [f"listening {port}"]
    assert holder.said[-1] == "closed"
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT):
        pass


def _server(port: int) -> Service:
    return Server(port=port)


def _proxy(port: int) -> Service:
    return Proxy("localhost:1", port=port)


@pytest.mark.parametrize("make", [_server, _proxy])
def test_the_server_and_the_proxy_check_their_port_alike(make: Callable[[int], Service]) -> None:
    with pytest.raises(ValueError, match=r"port must be in 0\.\.65535, not 70000"):
        make(70000)
    service = make(0)
    assert isinstance(service, Service) and service.addresses == []


class _Nagle(Service):
    """Notes whether each accepted connection has Nagle's algorithm off."""

    kind = "nagle"

    def __init__(self, host: str) -> None:
        super().__init__(host, 0)
        self.no_delay: list[int] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        self.no_delay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_an_accepted_connection_sends_small_writes_at_once(host: str) -> None:
    # The listener's sockets have proto 0, so asyncio leaves Nagle on for what they
    # accept: an answer written while the one before was unacknowledged waited for the
    # client's next segment (a follow's repairs waited a publisher tick for its next
    # request).  Every accepted TCP connection has TCP_NODELAY set.
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with _Nagle(host) as service:
        for _ in range(2):
            with socket.create_connection((host, service.port), timeout=TIMEOUT) as sock:
                sock.recv(1)
    assert len(service.no_delay) == 2 and all(service.no_delay), service.no_delay
