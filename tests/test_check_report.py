"""The reports of packetcore-check: JSON, JUnit XML, and the HTML page in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import junitparser
import pytest
from packetcore.check.model import (
    CheckRun,
    Level,
    Mark,
    ScenarioResult,
    SequenceRun,
    Verdict,
    runs_of,
)
from packetcore.check.report import (
    check_targets,
    write_html,
    write_json,
    write_junit,
    write_reports,
)
from packetcore.errors import OutputError

# The reports are written from a run's results: no engine is under them.
pytestmark = pytest.mark.engine_neutral

STDERR = "Traceback: <script>alert('x')</script> & \x1b[31mred\x1b[0m \x00 done"


def connection(number: int, opened: float, closed: float | None, **more: Any) -> dict[str, Any]:
    """A timeline entry as packetcore.faults.trace writes it."""
    entry: dict[str, Any] = {
        "number": number,
        "opened": opened,
        "closed": closed,
        "outcome": "closed by the client",
        "requests": [],
        "requests_total": 0,
        "packets": [],
        "packets_total": 0,
        "info_frames": [],
    }
    entry.update(more)
    return entry


def feed_map(last: int, **marks: Mark) -> list[SequenceRun]:
    """The sequence map of a feed 1..last, received but for ``marks`` ("5": MISSING)."""
    at = {int(k.lstrip("s")): v for k, v in marks.items()}
    return runs_of((s, at.get(s, Mark.RECEIVED)) for s in range(1, last + 1))


def result(
    name: str, verdict: Verdict, level: Level = Level.REQUIRED, **more: Any
) -> ScenarioResult:
    """A scenario's result, with a clean 14-packet feed unless ``more`` says otherwise."""
    fields: dict[str, Any] = {
        "name": name,
        "level": level,
        "description": f"the {name} scenario",
        "seed": 7,
        "verdict": verdict,
        "duration": 0.25,
        "time_limit": 20.0,
        "feed_first": 1,
        "feed_last": 14,
        "sequence_map": feed_map(14),
    }
    fields.update(more)
    return ScenarioResult(**fields)


def sample_run(level: Level = Level.REQUIRED) -> CheckRun:
    """A run with every verdict, both levels, a big feed and a traced timeline."""
    missing = {f"s{s}": Mark.MISSING for s in (5, 6, 7)}
    loss = result(
        "loss",
        Verdict.WRONG,
        repeat=2,
        reason="sequences 5-7 missing",
        faults="drop 3 packets from 5",
        sequence_map=feed_map(14, **missing),
        details={
            "missing": [5, 6, 7],
            "first_difference": {"sequence": 5, "expected": {"seq": 5}, "got": {"seq": 8}},
            "stderr_tail": STDERR.splitlines(),
        },
        timeline=[
            connection(
                1, 0.01, 0.08, requests=[{"at": 0.02, "call_type": 1, "start": 0, "count": 0}],
                requests_total=1, packets=[[0.03 + s / 1000, s] for s in (1, 2, 3, 4, 8)],
                packets_total=11, info_frames=[0.021], outcome="closed by the server",
            ),
            connection(
                2, 0.1, 0.15,
                requests=[
                    {"at": 0.11, "call_type": 2, "start": 5, "count": 1},
                    {"at": 0.12, "call_type": 4, "start": 6, "count": 2},
                    {"at": 0.13, "call_type": 3, "start": 0, "count": 0},
                    {"at": 0.135, "call_type": 9, "start": 0, "count": 0},
                ],
                requests_total=4, packets=[[0.14, 5], [0.141, 6], [0.142, 7]], packets_total=3,
            ),
            connection(
                3, 0.16, None, requests=[{"at": 0.17, "call_type": 5, "start": 9, "count": 0}],
                requests_total=12, outcome="",
            ),
        ],
    )  # fmt: skip
    duplicated = result(
        "duplicates",
        Verdict.WRONG,
        reason="sequences 9-10 written twice",
        sequence_map=feed_map(14, s9=Mark.DUPLICATED, s10=Mark.DUPLICATED),
        details={"duplicated": [9, 10]},
    )
    big_missing = {f"s{s}": Mark.MISSING for s in (*range(100, 121), 50_000, 99_999)}
    big = result(
        "big feed",
        Verdict.WRONG,
        reason="23 sequences missing",
        feed_last=100_000,
        sequence_map=feed_map(100_000, **big_missing),
        details={"missing": [*range(100, 121), 50_000, 99_999]},
    )
    return CheckRun(
        kind="client",
        target="python3 my_client.py --host 127.0.0.1 'a&b'",
        level=level,
        seed=7,
        started="2025-01-02T03:04:05Z",
        duration=12.5,
        results=[
            result("clean", Verdict.PASS, timeline=[connection(1, 0.0, 0.2)]),
            loss,
            duplicated,
            result(
                "silent",
                Verdict.NO_OUTPUT,
                reason="no output",
                sequence_map=[SequenceRun(Mark.MISSING, 1, 14)],
            ),
            result(
                "split",
                Verdict.CRASHED,
                reason="exit status 1",
                details={"exit_status": 1, "stderr_tail": STDERR},
            ),
            big,
            result("slow server", Verdict.HUNG, Level.HARDENING, reason="still running at 20 s"),
            result(
                "wrong records",
                Verdict.WRONG,
                Level.HARDENING,
                reason="sequence 3 differs",
                sequence_map=[*feed_map(14, s3=Mark.WRONG), SequenceRun(Mark.EXTRA, 15, 1)],
            ),
            result("reorder", Verdict.PASS, Level.HARDENING),
        ],
    )


# ------------------------------------------------------------------------------- JSON


def test_json_round_trips_to_as_dict(tmp_path: Path) -> None:
    run = sample_run()
    target = tmp_path / "report.json"
    write_json(run, target)
    assert json.loads(target.read_text(encoding="utf-8")) == run.as_dict()


def test_json_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    run = sample_run()
    write_json(run, "-")
    assert json.loads(capsys.readouterr().out) == run.as_dict()


# ------------------------------------------------------------------------------ JUnit

#: What Jenkins' junit-10.xsd allows: attributes per element (required ones first).
TESTSUITES_ATTRIBUTES = {"name", "time", "tests", "failures", "errors"}
TESTSUITE_REQUIRED = {"name", "tests", "failures", "errors"}
TESTSUITE_ATTRIBUTES = TESTSUITE_REQUIRED | {
    *("group", "time", "skipped", "timestamp", "hostname", "id", "package", "file", "log", "url")
}
TESTCASE_ATTRIBUTES = {"name", "time", "classname", "group"}
TESTCASE_CHILDREN = {"skipped", "error", "failure", "system-out", "system-err"}
SUREFIRE_TIME = re.compile(r"(([0-9]{0,3},)*[0-9]{3}|[0-9]{0,3})*(\.[0-9]*)?")


def validate_junit(root: ET.Element) -> None:
    """Assert what the common JUnit schema (junit-10.xsd) requires of the document."""
    assert root.tag == "testsuites"
    assert set(root.attrib) <= TESTSUITES_ATTRIBUTES
    assert SUREFIRE_TIME.fullmatch(root.attrib["time"])
    for suite in root:
        assert suite.tag == "testsuite"
        assert TESTSUITE_REQUIRED <= set(suite.attrib) <= TESTSUITE_ATTRIBUTES
        assert SUREFIRE_TIME.fullmatch(suite.attrib["time"])
        for child in suite:
            assert child.tag in {"properties", "testcase", "system-out", "system-err"}
            if child.tag == "properties":
                for prop in child:
                    assert prop.tag == "property"
                    assert set(prop.attrib) == {"name", "value"}
            if child.tag == "testcase":
                assert "name" in child.attrib
                assert set(child.attrib) <= TESTCASE_ATTRIBUTES
                assert {c.tag for c in child} <= TESTCASE_CHILDREN


def test_junit_is_valid_and_counts_each_verdict(tmp_path: Path) -> None:
    target = tmp_path / "junit.xml"
    write_junit(sample_run(), target)
    root = ET.parse(target).getroot()
    validate_junit(root)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("9", "4", "1")
    required, hardening = root.findall("testsuite")
    assert required.get("name", "").endswith("required")
    assert [required.get(k) for k in ("tests", "failures", "errors", "skipped")] == [
        "6", "4", "1", "0"
    ]  # fmt: skip
    assert [hardening.get(k) for k in ("tests", "failures", "errors", "skipped")] == [
        "3", "0", "0", "2"
    ]  # fmt: skip
    props = {p.get("name"): p.get("value") for p in required.iter("property")}
    assert props["seed"] == "7" and props["level"] == "required"
    assert props["target"] == "python3 my_client.py --host 127.0.0.1 'a&b'"

    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert cases["loss#2"].get("classname") == "packetcore-check.client"
    failure = cases["loss#2"].find("failure")
    assert failure is not None
    assert failure.get("type") == "wrong"
    assert failure.get("message") == "sequences 5-7 missing"
    assert "missing: 5-7" in (failure.text or "")
    assert "<script>alert('x')</script> &" in (failure.text or "")
    error = cases["split"].find("error")
    assert error is not None and error.get("type") == "crashed"
    assert "exit status: 1" in (error.text or "")
    assert "\\x1b[31mred" in (error.text or "")  # a control character, spelled out
    assert cases["silent"].find("failure") is not None
    assert cases["clean"].find("*") is None
    skipped = cases["slow server"].find("skipped")
    assert skipped is not None
    assert skipped.get("message", "").startswith(
        "hardening: not counted at level required (verdict: hung)"
    )
    assert cases["reorder"].find("*") is None

    # And as a JUnit reader (the one CI plugins are modelled on) sees it.
    xml = junitparser.JUnitXml.fromfile(str(target))
    suites = list(xml)
    assert [s.tests for s in suites] == [6, 3]
    assert [s.failures for s in suites] == [4, 0]
    assert [s.errors for s in suites] == [1, 0]
    assert [s.skipped for s in suites] == [0, 2]
    outcomes = {
        case.name: type(case.result[0]).__name__ if case.result else "passed"
        for suite in suites
        for case in suite
    }
    assert outcomes == {
        "clean": "passed",
        "loss#2": "Failure",
        "duplicates": "Failure",
        "silent": "Failure",
        "split": "Error",
        "big feed": "Failure",
        "slow server": "Skipped",
        "wrong records": "Skipped",
        "reorder": "passed",
    }


def test_junit_counts_hardening_at_level_hardening(tmp_path: Path) -> None:
    target = tmp_path / "junit.xml"
    write_junit(sample_run(Level.HARDENING), target)
    root = ET.parse(target).getroot()
    validate_junit(root)
    hardening = root.findall("testsuite")[1]
    assert [hardening.get(k) for k in ("tests", "failures", "errors", "skipped")] == [
        "3", "1", "1", "0"
    ]  # fmt: skip
    assert (root.get("failures"), root.get("errors")) == ("5", "2")


def test_junit_of_an_empty_interrupted_run_is_valid(tmp_path: Path) -> None:
    run = CheckRun("server", "127.0.0.1:1", Level.REQUIRED, 1, "2025-01-01T00:00:00Z")
    run.interrupted = True
    target = tmp_path / "junit.xml"
    write_junit(run, target)
    root = ET.parse(target).getroot()
    validate_junit(root)
    assert [s.get("tests") for s in root] == ["0", "0"]
    assert root.find("testsuite/system-err") is not None


# ------------------------------------------------------------------------------- HTML


def test_html_is_one_file_that_loads_nothing(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    write_html(sample_run(), target)
    page = target.read_text(encoding="utf-8")
    lowered = page.lower()
    for external in ("http://", "https://", "src=", "url(", "<link", "@import", "<script"):
        assert external not in lowered, external
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp;" in page
    assert "&#x27;a&amp;b&#x27;" in page
    assert "\x1b" not in page and "\x00" not in page
    assert page.count('<section class="scenario') == 9
    assert '<span class="badge failed" id="outcome">FAILED</span>' in page


def rects(page: str, section: str, mark: str) -> list[tuple[int, int]]:
    """The (first, count) of the runs of ``mark`` drawn in a scenario's section."""
    start = page.index(f'id="{section}"')
    end = page.index("</section>", start)
    pattern = rf'data-mark="{mark}" data-first="(\d+)" data-count="(\d+)"'
    return [(int(a), int(b)) for a, b in re.findall(pattern, page[start:end])]


def test_html_sequence_map_marks_each_run(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    write_html(sample_run(), target)
    page = target.read_text(encoding="utf-8")
    assert rects(page, "scenario-loss-2", "missing") == [(5, 3)]
    assert rects(page, "scenario-loss-2", "received") == [(1, 4), (8, 7)]
    assert rects(page, "scenario-duplicates", "duplicated") == [(9, 2)]
    assert rects(page, "scenario-wrong-records", "extra") == [(15, 1)]
    assert rects(page, "scenario-big-feed", "missing") == [(100, 21), (50_000, 1), (99_999, 1)]
    assert "<title>missing 5-7</title>" in page
    # Each run of a long feed stays visible: at least the minimum width.
    start = page.index('id="scenario-big-feed"')
    widths = re.findall(r'width="([\d.]+)"[^>]*data-mark="missing"', page[start:])
    assert widths and all(float(w) >= 2.9 for w in widths[:3])


def test_html_timeline_draws_each_connection_and_request(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    write_html(sample_run(), target)
    page = target.read_text(encoding="utf-8")
    start = page.index('id="scenario-loss-2"')
    section = page[start : page.index("</section>", start)]
    assert section.count('<g class="connection"') == 3
    for label in ("stream", "resend 5", "range 6+2", "hello", "unknown callType 9", "subscribe 9"):
        assert f"{label} at " in section, label
    assert section.count('class="packet"') == 8
    assert "info frame at 0.021 s" in section
    assert "+11 requests not traced" in section
    assert "no connections traced" in page  # a client scenario with no timeline


def test_html_timeline_tolerates_partial_entries_and_clock_readings(tmp_path: Path) -> None:
    partial = result(
        "partial",
        Verdict.WRONG,
        timeline=[
            {},
            {"number": 2, "requests": [{"at": 0.1}, {"call_type": 1}], "packets": [[0.1], "x"]},
            {"number": 3, "opened": None, "closed": "soon", "info_frames": [None]},
        ],
    )
    # A trace in clock readings (long after the scenario's time limit): from the first on.
    clock = result(
        "clock",
        Verdict.PASS,
        duration=0.5,
        timeline=[
            connection(1, 5000.0, 5000.2, requests=[{"at": 5000.1, "call_type": 1}]),
            connection(2, 5000.3, 5000.4),
        ],
    )
    run = CheckRun("client", "c", Level.REQUIRED, 1, "t", results=[partial, clock])
    target = tmp_path / "report.html"
    write_html(run, target)
    page = target.read_text(encoding="utf-8")
    start = page.index('id="scenario-partial"')
    section = page[start : page.index("</section>", start)]
    assert section.count('<g class="connection"') == 3
    assert "a request at 0.100 s" in section and "stream at 0.000 s" in section
    start = page.index('id="scenario-clock"')
    section = page[start : page.index("</section>", start)]
    assert "connection 1: opened at 0.000 s, closed at 0.200 s" in section
    assert "stream at 0.100 s" in section
    assert "connection 2: opened at 0.300 s" in section


def test_html_caps_the_lanes_and_bins_a_map_of_many_runs(tmp_path: Path) -> None:
    every_other = runs_of((s, Mark.MISSING if s % 2 else Mark.RECEIVED) for s in range(1, 20_001))
    many = result(
        "holes",
        Verdict.WRONG,
        feed_last=20_000,
        sequence_map=every_other,
        timeline=[connection(n, n / 100, n / 100 + 0.005) for n in range(1, 81)],
    )
    run = CheckRun("client", "c", Level.REQUIRED, 1, "2025-01-01T00:00:00Z", results=[many])
    target = tmp_path / "report.html"
    write_html(run, target)
    page = target.read_text(encoding="utf-8")
    assert page.count('<g class="connection"') == 50
    assert "and 30 more connections not drawn" in page
    assert 'data-binned="1"' in page
    assert page.count("<rect") <= 600
    assert "20,000 runs" in page
    assert target.stat().st_size < 400_000


# -------------------------------------------------------------------- writing and paths


def test_a_report_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no such directory" / "report.xml"
    with pytest.raises(OutputError) as caught:
        write_junit(sample_run(), missing)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write the JUnit report {missing}: ")
    with pytest.raises(OutputError, match=r"HTML report .* directory"):
        write_html(sample_run(), tmp_path)
    with pytest.raises(OutputError, match="cannot write the JSON report"):
        check_targets(json=missing)
    check_targets(json="-", junit=tmp_path / "ok.xml")


def test_write_reports_writes_each_and_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    run = sample_run()
    old = tmp_path / "old.html"
    old.write_text("old page")
    bad = tmp_path / "no such directory" / "junit.xml"
    with pytest.raises(OutputError, match="JUnit"):
        write_reports(run, json=tmp_path / "r.json", junit=bad, html=tmp_path / "r.html")
    assert json.loads((tmp_path / "r.json").read_text())["summary"] == run.summary()
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    write_reports(run, html=old)
    assert "packetcore-check" in old.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.html", "r.html", "r.json"]


# ------------------------------------------------------------------ in a real browser


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium binary on this machine (.ci/run installs Debian's chromium)")


def test_the_page_in_a_real_browser(tmp_path: Path) -> None:
    executable = chromium()
    from playwright.sync_api import sync_playwright

    run = sample_run()
    target = tmp_path / "report.html"
    write_html(run, target)
    url = target.as_uri()
    problems: list[str] = []
    requested: list[str] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"], timeout=60_000
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: requested.append(r.url))
            page.goto(url, wait_until="load", timeout=60_000)
            assert problems == []
            assert requested == [url]  # nothing but the page itself
            assert page.evaluate("document.scripts.length") == 0  # stderr's <script> is text
            assert page.inner_text("#outcome") == "FAILED"

            for index, scenario in enumerate(run.results):
                row = page.locator("table.scenarios tbody tr").nth(index)
                assert row.locator("td").first.inner_text() == scenario.label
                assert row.is_visible()
                summary = page.locator("section.scenario > details > summary").nth(index)
                assert summary.locator(".label").inner_text() == scenario.label
                assert summary.is_visible()

            # The failing scenario's map: its missing runs cover exactly 5..7, drawn.
            missing = page.locator("#scenario-loss-2 svg.sequence-map rect[data-mark=missing]")
            covered: set[int] = set()
            for i in range(missing.count()):
                rect = missing.nth(i)
                first = int(rect.get_attribute("data-first") or "0")
                count = int(rect.get_attribute("data-count") or "0")
                covered.update(range(first, first + count))
                box = rect.bounding_box()
                assert box is not None and box["width"] >= 1 and box["height"] >= 10
            assert covered == {5, 6, 7}
            assert page.locator("#scenario-loss-2 svg.timeline g.connection").count() == 3
            big = page.locator("#scenario-big-feed rect[data-mark=missing]")
            for i in range(big.count()):
                box = big.nth(i).bounding_box()
                assert box is not None and box["width"] >= 1
            assert page.locator("#scenario-clean details").get_attribute("open") is None
            assert page.locator("#scenario-split details").get_attribute("open") == ""

            # The filter: only what did not pass, then everything again.
            page.check("#failures-only")
            assert page.locator("#scenario-clean").is_hidden()
            assert page.locator("table.scenarios tbody tr.passed").first.is_hidden()
            assert page.locator("#scenario-loss-2").is_visible()
            page.uncheck("#failures-only")
            assert page.locator("#scenario-clean").is_visible()
            assert problems == []
        finally:
            browser.close()
