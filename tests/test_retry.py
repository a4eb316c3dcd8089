"""The one retry-with-backoff every repeated attempt of a fetch or a follow uses."""

from __future__ import annotations

import asyncio
import logging

import pytest
from packetcore.client import retry as retry_module
from packetcore.client.retry import MAX_BACKOFF, Retry, backoff_delay
from packetcore.client.session import FetchOptions


def test_the_pause_doubles_from_backoff_up_to_the_cap() -> None:
    assert [backoff_delay(n, 0.1) for n in (1, 2, 3, 4)] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert backoff_delay(10, 0.1) == MAX_BACKOFF
    assert backoff_delay(10_000, 5.0) == MAX_BACKOFF  # no overflow, however many failures
    assert backoff_delay(3, 0.0) == 0.0


def test_retries_failures_in_a_row_are_retried_and_one_more_gives_up() -> None:
    retry = Retry(retries=2, backoff=0.1)
    assert retry.failures == 0 and not retry.exhausted and retry.delay == 0.0
    assert retry.fail() and retry.failures == 1 and retry.delay == pytest.approx(0.1)
    assert retry.fail() and retry.failures == 2 and retry.delay == pytest.approx(0.2)
    assert not retry.fail()  # the third failure in a row: give up
    assert retry.exhausted and retry.failures == 3


def test_a_success_starts_the_count_afresh() -> None:
    retry = Retry(retries=1, backoff=0.1)
    assert retry.fail()
    retry.succeeded()
    assert retry.failures == 0 and retry.delay == 0.0
    assert retry.fail() and retry.delay == pytest.approx(0.1)  # the first pause again


def test_no_retries_gives_up_at_the_first_failure() -> None:
    retry = FetchOptions(retries=0, backoff=0.5).retry()
    assert (retry.retries, retry.backoff) == (0, 0.5)
    assert not retry.fail()


def test_pause_logs_the_retry_and_sleeps_the_delay(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(retry_module.asyncio, "sleep", sleep)
    logger = logging.getLogger("packetcore.test")
    retry = Retry(retries=3, backoff=0.25)

    async def attempts() -> None:
        await retry.pause(logger, logging.INFO, "nothing failed yet")  # no pause, no line
        retry.fail()
        await retry.pause(logger, logging.INFO, "connecting to %s:%d: %s", "h", 1, "refused")
        retry.fail()
        await retry.pause()  # silent, but pauses

    with caplog.at_level(logging.DEBUG, logger="packetcore.test"):
        asyncio.run(attempts())
    assert slept == [0.25, 0.5]
    assert [r.getMessage() for r in caplog.records] == [
        "connecting to h:1: refused; retrying in 0.25 s"
    ]
