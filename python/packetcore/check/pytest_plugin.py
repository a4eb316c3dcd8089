"""A pytest plugin: "my client passes the required scenarios" in a project's own suite.

Enable it in a ``conftest.py`` (it is not loaded on its own)::

    pytest_plugins = ["packetcore.check.pytest_plugin"]

    def test_my_client_survives_the_network(packetcore_check):
        packetcore_check(["node", "client.js", "--port", "{port}"], jobs=2)

The fixture runs :func:`~packetcore.check.client.check_client` and fails the test with
one line per scenario that did not pass (or one line saying why the check could not
run); it returns the :class:`CheckRun` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from ..errors import UserError
from .client import check_client
from .model import CheckRun

__all__ = ["assert_passes", "packetcore_check"]


def assert_passes(run: CheckRun) -> CheckRun:
    """Return ``run`` if it passed; raise AssertionError naming each failure otherwise."""
    if run.passed:
        return run
    lines = [run.summary()]
    lines += [f"  {r.label} ({r.level}): {r.verdict.value}: {r.reason}" for r in run.failures]
    raise AssertionError("\n".join(lines))


@pytest.fixture
def packetcore_check(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., CheckRun]:
    """Return ``check(command, **options)``: grade the client, fail the test unless it passes.

    The options are :func:`~packetcore.check.client.check_client`'s; ``cwd`` defaults to
    a fresh temporary directory, so that no file of the project is written.
    """

    def check(command: str | Sequence[str], **options: Any) -> CheckRun:
        options.setdefault("cwd", tmp_path_factory.mktemp("packetcore-check"))
        try:
            run = check_client(command, **options)
        except UserError as exc:
            failure = f"packetcore-check: {exc}"
        else:
            return assert_passes(run)
        # The check could not run (a busy port, a command not found): one line, and
        # outside the except, so that no "during handling" chain follows it.
        pytest.fail(failure, pytrace=False)

    return check
