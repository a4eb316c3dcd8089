"""packetcore-check: grade any client or server of the feed protocol against a battery.

``check_client(command, ...)`` runs a client command once per scenario against a server
and a fault proxy of the check's own and compares what it wrote with the feed;
``check_server(host, port, ...)`` grades a server.  Both return a
:class:`~packetcore.check.model.CheckRun`; :mod:`packetcore.check.report` writes it as
JSON, JUnit XML or one HTML page; :mod:`packetcore.check.pytest_plugin` puts a check in a
project's own suite.
"""

from __future__ import annotations

from .client import ClientCommand, check_client, check_client_async
from .model import CheckRun, Level, Mark, ScenarioResult, Verdict
from .scenarios import SCENARIOS, Scenario
from .server import SERVER_SCENARIOS, check_server, check_server_async

__all__ = [
    "SCENARIOS",
    "SERVER_SCENARIOS",
    "CheckRun",
    "ClientCommand",
    "Level",
    "Mark",
    "Scenario",
    "ScenarioResult",
    "Verdict",
    "check_client",
    "check_client_async",
    "check_server",
    "check_server_async",
]
