"""The reports of a check: JSON, JUnit XML, and one self-contained HTML page.

:func:`write_json` writes :meth:`CheckRun.as_dict`; :func:`write_junit` one
``<testsuite>`` per level that CI systems show; :func:`write_html` one page that needs
nothing but itself to be viewed (inline CSS and SVG, no URL of any kind, no script): a
summary, a table of the scenarios, and per scenario its details with two pictures drawn
here, the sequence map and the timeline of the client's connections.  Every file is
written atomically (:class:`packetcore.io.output.AtomicFile`), in pieces as it is made;
``-`` writes to stdout.  A report that cannot be written raises
:class:`packetcore.errors.OutputError` with one line that names it.
"""

from __future__ import annotations

import contextlib
import io
import json as jsonlib
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from html import escape
from typing import Any, TextIO

from ..errors import OutputError
from ..io.output import STDOUT, AtomicFile, check_writable
from ..protocol import HELLO, RESEND, RESEND_RANGE, STREAM_ALL, SUBSCRIBE
from .model import CheckRun, Level, Mark, ScenarioResult, SequenceRun, Verdict

__all__ = [
    "check_targets",
    "write_html",
    "write_json",
    "write_junit",
    "write_reports",
]

PathLike = str | os.PathLike[str]

# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def _opened(path: PathLike, what: str) -> Iterator[TextIO]:
    """Yield a text stream onto ``path`` (or stdout), put in place when the block ends."""
    name = os.fspath(path)
    if name == STDOUT:
        if sys.stdout is None:
            raise OutputError(f"cannot write the {what} report to stdout: it is closed")
        try:
            yield sys.stdout
            sys.stdout.flush()
        except OSError as exc:
            raise OutputError(f"cannot write the {what} report to stdout: {_why(exc)}") from exc
        return
    try:
        if not name or name.endswith(os.sep) or os.path.isdir(name):
            raise IsADirectoryError(21, "it is a directory")
        file = AtomicFile(name)
    except OSError as exc:
        raise OutputError(f"cannot write the {what} report {name}: {_why(exc)}") from exc
    try:
        text = io.TextIOWrapper(file.stream, encoding="utf-8", newline="\n")
        yield text
        text.flush()
        text.detach()
        file.commit()
    except OSError as exc:
        file.discard()
        raise OutputError(f"cannot write the {what} report {name}: {_why(exc)}") from exc
    except BaseException:
        file.discard()
        raise


def _why(exc: OSError) -> str:
    return str(exc.strerror or exc)


def check_targets(
    *,
    json: PathLike | None = None,
    junit: PathLike | None = None,
    html: PathLike | None = None,
) -> None:
    """Raise :class:`OutputError` now if a report could not be written later.

    For a command to call before a long run, so that a report path in a directory that
    does not exist fails at once, in one line.
    """
    for what, path in (("JSON", json), ("JUnit", junit), ("HTML", html)):
        if path is None or os.fspath(path) == STDOUT:
            continue
        name = os.fspath(path)
        try:
            if not name:
                raise FileNotFoundError(2, "the path is empty")
            check_writable(name)
        except OSError as exc:
            raise OutputError(f"cannot write the {what} report {name}: {_why(exc)}") from exc


def write_reports(
    run: CheckRun,
    *,
    json: PathLike | None = None,
    junit: PathLike | None = None,
    html: PathLike | None = None,
) -> None:
    """Write each report that is given a path (``-``: stdout), JSON first, HTML last.

    Every report is tried; the first that could not be written is raised afterwards
    (:class:`OutputError`), so one bad path does not cost the others.
    """
    failed: OutputError | None = None
    for path, write in ((json, write_json), (junit, write_junit), (html, write_html)):
        if path is None:
            continue
        try:
            write(run, path)
        except OutputError as exc:
            failed = failed or exc
    if failed is not None:
        raise failed


# ------------------------------------------------------------------------------ text

# Characters XML 1.0 cannot hold at all (and HTML holds as parse errors): a client's
# stderr may well have them (colour escapes).  Lone surrogates (undecodable bytes kept
# by surrogateescape) cannot even be encoded as UTF-8.
_UNPRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _printable(text: object) -> str:
    """Return ``text`` as a string with every unprintable character spelled ``\\xNN``."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def _e(text: object) -> str:
    """Return ``text`` escaped for HTML or XML text and attribute values (quotes too)."""
    return escape(_printable(text), quote=True)


def _ranges(values: Iterable[Any]) -> str:
    """Return integers as ranges (``5-7, 10``); anything else as it is."""
    items = list(values)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        return ", ".join(str(v) for v in items)
    parts: list[str] = []
    start = previous = None
    for value in items:
        if previous is not None and value == previous + 1:
            previous = value
            continue
        if start is not None:
            parts.append(f"{start}-{previous}" if previous != start else f"{start}")
        start = previous = value
    if start is not None:
        parts.append(f"{start}-{previous}" if previous != start else f"{start}")
    return ", ".join(parts)


def _record(record: Any) -> str:
    if record is None:
        return "nothing"
    if isinstance(record, str):
        return record
    return jsonlib.dumps(record, separators=(", ", ": "), default=str)


def _stderr(details: Mapping[str, Any]) -> str:
    tail = details.get("stderr_tail")
    if tail is None:
        return ""
    if isinstance(tail, (list, tuple)):
        return "\n".join(str(line) for line in tail)
    return str(tail)


#: The lists of sequences a wrong output's details may hold, and their headings.
_LISTS = (
    ("missing", "missing"),
    ("wrong", "a wrong record"),
    ("extra", "not in the feed"),
    ("duplicated", "duplicated"),
    ("out_of_order", "out of order"),
)
_SHOWN = {
    "first_difference", "stderr_tail", "exit_status",
    *(key for key, _ in _LISTS), *(f"{key}_count" for key, _ in _LISTS),
}  # fmt: skip


def _detail_lines(result: ScenarioResult) -> list[tuple[str, str]]:
    """Return the details as (heading, text) pairs, the known ones first, stderr not."""
    details = result.details
    lines: list[tuple[str, str]] = []
    first = details.get("first_difference")
    if isinstance(first, Mapping):
        position, sequence = first.get("position"), first.get("sequence")
        if isinstance(position, int):
            where = f"record {position + 1} of the output"
        else:
            where = "?" if sequence is None else f"sequence {sequence}"
        lines.append(("first difference", where))
        lines.append(("expected", _record(first.get("expected"))))
        lines.append(("got", _record(first.get("got"))))
    for key, heading in _LISTS:
        values = details.get(key)
        if values:
            if isinstance(values, (list, tuple)) and all(isinstance(v, Mapping) for v in values):
                shown = ", ".join(
                    f"{v.get('sequence', '?')} after {v.get('after', '?')}" for v in values
                )
            elif isinstance(values, (list, tuple)):
                shown = _ranges(values)
            else:
                shown = str(values)
            count = details.get(f"{key}_count")
            if isinstance(count, int) and isinstance(values, (list, tuple)) and count > len(values):
                shown += f" (the first {len(values)} of {count})"
            lines.append((heading, shown))
    if "exit_status" in details:
        lines.append(("exit status", str(details["exit_status"])))
    for key, value in details.items():
        if key not in _SHOWN and value not in ([], "", None):
            text = value if isinstance(value, str) else jsonlib.dumps(value, default=str)
            lines.append((key.replace("_", " "), text))
    return lines


def _seconds(value: float) -> str:
    return f"{max(value, 0.0):.3f}" if math.isfinite(value) else "0.000"


# ------------------------------------------------------------------------------ JSON


def write_json(run: CheckRun, path: PathLike) -> None:
    """Write ``run`` as JSON (:meth:`CheckRun.as_dict`) to ``path`` (``-``: stdout)."""
    with _opened(path, "JSON") as out:
        jsonlib.dump(run.as_dict(), out, indent=1, default=str)
        out.write("\n")


# ----------------------------------------------------------------------------- JUnit

#: Verdicts that are an <error> (the command itself went wrong) rather than a <failure>.
_ERRORS = frozenset({Verdict.CRASHED, Verdict.HUNG})


def _junit_body(result: ScenarioResult) -> str:
    lines = [f"{result.label}: {result.verdict}"]
    if result.reason:
        lines.append(result.reason)
    if result.faults:
        lines.append(f"faults: {result.faults}")
    lines.extend(f"{heading}: {text}" for heading, text in _detail_lines(result))
    stderr = _stderr(result.details)
    if stderr:
        lines.append("stderr (last lines):")
        lines.append(stderr)
    return "\n".join(lines)


def _junit_case(run: CheckRun, result: ScenarioResult) -> str:
    head = (
        f'    <testcase classname="packetcore-check.{_e(run.kind)}" name="{_e(result.label)}" '
        f'time="{_seconds(result.duration)}"'
    )
    if result.passed:
        return head + "/>\n"
    verdict = _e(result.verdict.value)
    message = _e(result.reason or result.verdict.value)
    if not result.level.counts_at(run.level):
        note = f"{result.level}: not counted at level {run.level} (verdict: {result.verdict})"
        if result.reason:
            note += f": {result.reason}"
        return f'{head}>\n      <skipped message="{_e(note)}"/>\n    </testcase>\n'
    tag = "error" if result.verdict in _ERRORS else "failure"
    body = _e(_junit_body(result))
    return (
        f'{head}>\n      <{tag} message="{message}" type="{verdict}">{body}</{tag}>\n'
        "    </testcase>\n"
    )


def write_junit(run: CheckRun, path: PathLike) -> None:
    """Write ``run`` as JUnit XML: a ``<testsuite>`` per level, a ``<testcase>`` per result.

    A wrong or empty output is a ``<failure>``, a crash or a hang an ``<error>``; a
    result whose level does not count at the run's level and did not pass is
    ``<skipped>`` (shown, not failing).  Valid per the common JUnit schema (Jenkins'
    ``junit-10.xsd``).
    """
    with _opened(path, "JUnit") as out:
        suites = []
        for level in Level:
            results = [r for r in run.results if r.level is level]
            counted = level.counts_at(run.level)
            failures = errors = skipped = 0
            for result in results:
                if result.passed:
                    continue
                if not counted:
                    skipped += 1
                elif result.verdict in _ERRORS:
                    errors += 1
                else:
                    failures += 1
            suites.append((level, results, failures, errors, skipped))
        out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
        out.write(
            f'<testsuites name="packetcore-check {_e(run.kind)}" '
            f'tests="{len(run.results)}" failures="{sum(s[2] for s in suites)}" '
            f'errors="{sum(s[3] for s in suites)}" time="{_seconds(run.duration)}">\n'
        )
        for level, results, failures, errors, skipped in suites:
            time = sum(r.duration for r in results)
            out.write(
                f'  <testsuite name="packetcore-check.{_e(run.kind)}.{level}" '
                f'tests="{len(results)}" failures="{failures}" errors="{errors}" '
                f'skipped="{skipped}" time="{_seconds(time)}" timestamp="{_e(run.started)}">\n'
            )
            out.write("    <properties>\n")
            properties = (
                ("seed", run.seed),
                ("level", run.level),
                ("target", run.target),
                ("kind", run.kind),
                ("counted", "yes" if level.counts_at(run.level) else "no"),
                ("interrupted", "yes" if run.interrupted else "no"),
            )
            for name, value in properties:
                out.write(f'      <property name="{name}" value="{_e(value)}"/>\n')
            out.write("    </properties>\n")
            for result in results:
                out.write(_junit_case(run, result))
            if run.interrupted and level is Level.REQUIRED:
                out.write("    <system-err>interrupted before every scenario ran</system-err>\n")
            out.write("  </testsuite>\n")
        out.write("</testsuites>\n")


# ------------------------------------------------------------------------------ HTML

#: A mark's colour on the sequence map, and its legend's order.
MARK_COLOURS = {
    Mark.RECEIVED: "#8cc98f",
    Mark.MISSING: "#d93025",
    Mark.DUPLICATED: "#f2a600",
    Mark.WRONG: "#8e3bb5",
    Mark.EXTRA: "#1a73e8",
}
#: At most this many runs are drawn one rect each; a map with more is drawn in bins.
MAX_RUNS_DRAWN = 4000
#: At most this many connections get a lane of the timeline.
MAX_LANES = 50

_WIDTH = 1000  # the pictures' width, in SVG units (they scale to the page)
_MIN_RUN = 3.0  # the narrowest a run other than "received" is drawn

_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #ffffff; --soft: #f6f8fa;
  --pass: #1a7f37; --fail: #cf222e; --warn: #9a6700; --crash: #a40e26; --hung: #8250df; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); background: var(--bg); margin: 0 auto; padding: 1.5rem 2rem 3rem;
  max-width: 1200px; }
h1 { font-size: 1.5rem; margin: 0 0 .5rem; display: flex; gap: .75rem; align-items: center; }
h2 { font-size: 1.15rem; margin: 2rem 0 .75rem; }
h3 { font-size: .95rem; margin: 1.1rem 0 .4rem; color: var(--muted); }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 12.5px; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px;
  padding: .6rem .8rem; overflow: auto; max-height: 24rem; white-space: pre-wrap;
  word-break: break-all; }
header.run { border: 1px solid var(--line); border-left: 6px solid var(--pass);
  border-radius: 8px; padding: 1rem 1.25rem; background: var(--soft); }
header.run.failed { border-left-color: var(--fail); }
.badge { display: inline-block; color: #fff; border-radius: 6px; padding: .15rem .6rem;
  font-weight: 700; letter-spacing: .04em; }
.badge.passed { background: var(--pass); } .badge.failed { background: var(--fail); }
.summary { font-size: 1.05rem; margin: .25rem 0 .75rem; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem;
  margin: 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; word-break: break-all; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.verdict { display: inline-block; border-radius: 999px; padding: 0 .55rem; font-weight: 600;
  font-size: 12.5px; color: #fff; white-space: nowrap; }
.v-pass { background: var(--pass); } .v-wrong { background: var(--fail); }
.v-no-output { background: var(--warn); } .v-crashed { background: var(--crash); }
.v-hung { background: var(--hung); }
.uncounted { color: var(--muted); font-size: 12px; white-space: nowrap; }
.filter { margin: .75rem 0; color: var(--muted); user-select: none; }
body:has(#failures-only:checked) .passed { display: none; }
section.scenario { margin: .6rem 0; border: 1px solid var(--line); border-radius: 8px; }
section.scenario > details > summary { cursor: pointer; padding: .55rem .8rem;
  display: flex; gap: .6rem; align-items: baseline; flex-wrap: wrap; }
section.scenario > details > summary .label { font-weight: 600; }
section.scenario > details > summary .reason { color: var(--muted); }
section.scenario > details > .body { padding: 0 1rem 1rem; border-top: 1px solid var(--line); }
svg { display: block; width: 100%; height: auto; }
svg text { font: 11px system-ui, sans-serif; fill: var(--muted); }
svg .lane-label { fill: var(--fg); }
.legend { display: flex; gap: 1rem; flex-wrap: wrap; margin: .3rem 0 0; color: var(--muted);
  font-size: 12.5px; }
.swatch { display: inline-block; width: .8rem; height: .8rem; border-radius: 2px;
  vertical-align: -1px; margin-right: .3rem; }
.note { color: var(--muted); font-size: 12.5px; margin: .3rem 0; }
a { color: #0969da; text-decoration: none; } a:hover { text-decoration: underline; }
"""


def _slugs(results: Sequence[ScenarioResult]) -> list[str]:
    """Return one unique element id per result, from its label."""
    out: list[str] = []
    seen: set[str] = set()
    for result in results:
        base = "scenario-" + (re.sub(r"[^a-z0-9]+", "-", result.label.lower()).strip("-") or "x")
        slug, n = base, 1
        while slug in seen:
            n += 1
            slug = f"{base}-{n}"
        seen.add(slug)
        out.append(slug)
    return out


def _verdict_class(verdict: Verdict) -> str:
    return "v-" + verdict.value.replace(" ", "-")


def _verdict_badge(verdict: Verdict) -> str:
    return f'<span class="verdict {_verdict_class(verdict)}">{_e(verdict.value)}</span>'


def _fmt_time(seconds: float) -> str:
    if seconds >= 100:
        return f"{seconds:.0f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.0f} ms"


def write_html(run: CheckRun, path: PathLike) -> None:
    """Write ``run`` as one self-contained HTML page to ``path`` (``-``: stdout).

    Inline CSS and SVG only: the page loads nothing and runs no script; every text of
    the run (the command, stderr, records) is escaped.
    """
    with _opened(path, "HTML") as out:
        for chunk in _html(run):
            out.write(chunk)


def _html(run: CheckRun) -> Iterator[str]:
    state = "passed" if run.passed else "failed"
    yield (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>packetcore-check {_e(run.kind)}: {state.upper()}</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n"
    )
    yield f'<header class="run {state}">\n'
    yield (
        f'<h1><span class="badge {state}" id="outcome">{state.upper()}</span> '
        f"packetcore-check {_e(run.kind)}</h1>\n"
        f'<p class="summary">{_e(run.summary())}</p>\n<dl class="facts">\n'
    )
    facts = (
        ("target", f"<code>{_e(run.target)}</code>"),
        ("kind", _e(run.kind)),
        ("level", _e(run.level)),
        ("seed", _e(run.seed)),
        ("started", _e(run.started)),
        ("duration", _e(_fmt_time(run.duration))),
    )
    for name, value in facts:
        yield f"<dt>{name}</dt><dd>{value}</dd>\n"
    if run.interrupted:
        yield "<dt>interrupted</dt><dd>before every scenario ran</dd>\n"
    yield "</dl>\n</header>\n"

    slugs = _slugs(run.results)
    yield "<h2>Scenarios</h2>\n"
    if not run.results:
        yield '<p class="note">No scenario ran.</p>\n'
    else:
        yield (
            '<label class="filter"><input type="checkbox" id="failures-only"> '
            "show only the scenarios that did not pass</label>\n"
            '<table class="scenarios">\n<thead><tr><th>scenario</th><th>level</th>'
            "<th>verdict</th><th>reason</th><th>time</th></tr></thead>\n<tbody>\n"
        )
        for result, slug in zip(run.results, slugs, strict=True):
            passed = " passed" if result.passed else ""
            uncounted = (
                ' <span class="uncounted">(not counted)</span>'
                if not result.level.counts_at(run.level)
                else ""
            )
            yield (
                f'<tr class="row{passed}" data-verdict="{_e(result.verdict.value)}">'
                f'<td><a href="#{slug}">{_e(result.label)}</a></td>'
                f"<td>{_e(result.level)}{uncounted}</td>"
                f"<td>{_verdict_badge(result.verdict)}</td>"
                f"<td>{_e(result.reason)}</td>"
                f'<td class="num">{_e(_fmt_time(result.duration))}</td></tr>\n'
            )
        yield "</tbody>\n</table>\n<h2>Details</h2>\n"
    for result, slug in zip(run.results, slugs, strict=True):
        yield from _section(run, result, slug)
    yield "</body>\n</html>\n"


def _section(run: CheckRun, result: ScenarioResult, slug: str) -> Iterator[str]:
    passed = " passed" if result.passed else ""
    opened = "" if result.passed else " open"
    yield (
        f'<section class="scenario{passed}" id="{slug}" '
        f'data-verdict="{_e(result.verdict.value)}">\n<details{opened}>\n<summary>'
        f"{_verdict_badge(result.verdict)} "
        f'<span class="label">{_e(result.label)}</span> '
        f'<span class="reason">{_e(result.reason)}</span></summary>\n<div class="body">\n'
    )
    if result.description:
        yield f"<p>{_e(result.description)}</p>\n"
    facts = [
        ("level", _e(result.level)
         + ("" if result.level.counts_at(run.level) else " (not counted at this run's level)")),
        ("faults", _e(result.faults or "none")),
        ("feed", _e(f"sequences {result.feed_first}..{result.feed_last}")),
        ("seed", _e(result.seed)),
        ("time", _e(f"{_fmt_time(result.duration)} of {_fmt_time(result.time_limit)} allowed")),
    ]  # fmt: skip
    if result.repeat:
        facts.append(("draw", _e(result.repeat)))
    yield '<dl class="facts">\n'
    for name, value in facts:
        yield f"<dt>{name}</dt><dd>{value}</dd>\n"
    yield "</dl>\n"
    lines = _detail_lines(result)
    if lines:
        yield '<h3>What differs</h3>\n<dl class="facts mono">\n'
        for heading, text in lines:
            yield f"<dt>{_e(heading)}</dt><dd>{_e(text)}</dd>\n"
        yield "</dl>\n"
    stderr = _stderr(result.details)
    if stderr:
        yield f"<h3>stderr (last lines)</h3>\n<pre>{_e(stderr)}</pre>\n"
    yield "<h3>Sequence map</h3>\n"
    yield from _sequence_map(result)
    if result.timeline:
        yield "<h3>Timeline of the connections</h3>\n"
        yield from _timeline(result)
    elif run.kind == "client":
        yield '<h3>Timeline of the connections</h3>\n<p class="note">no connections traced</p>\n'
    yield "</div>\n</details>\n</section>\n"


# ------------------------------------------------------------------ the sequence map


def _run_title(mark: Mark | str, first: int, count: int) -> str:
    span = f"{first}" if count == 1 else f"{first}-{first + count - 1}"
    return f"{mark} {span}"


def _sequence_map(result: ScenarioResult) -> Iterator[str]:
    runs = sorted(result.sequence_map, key=lambda r: r.first)
    if not runs:
        yield '<p class="note">no sequence map</p>\n'
        return
    totals = dict.fromkeys(Mark, 0)
    for run in runs:
        totals[run.mark] += run.count
    height = 28
    top = 4
    yield (
        f'<svg class="sequence-map" viewBox="0 0 {_WIDTH} {top + height + 18}" '
        'role="img" aria-label="the sequence map">\n'
    )
    low, high = runs[0].first, runs[-1].last
    # Under the strip: the first and last sequences, and where each run other than
    # "received" starts, where there is room for it.
    labels = [(0.0, str(low))]
    end_label = _WIDTH - 6.2 * len(str(high)) - 8
    if len(runs) <= MAX_RUNS_DRAWN:
        for x, width, run in _layout(runs):
            yield (
                f'<rect x="{x:.2f}" y="{top}" width="{width:.2f}" height="{height}" '
                f'fill="{MARK_COLOURS[run.mark]}" data-mark="{run.mark.value}" '
                f'data-first="{run.first}" data-count="{run.count}">'
                f"<title>{_e(_run_title(run.mark, run.first, run.count))}</title></rect>\n"
            )
            text = str(run.first)
            last_x, last_text = labels[-1]
            fits = x >= last_x + 6.2 * len(last_text) + 8 and x + 6.2 * len(text) <= end_label
            if run.mark is not Mark.RECEIVED and fits:
                labels.append((x, text))
        note = ""
    else:
        yield from _binned(runs, top, height)
        note = (
            f'<p class="note">{len(runs):,} runs, drawn in bins of sequences: each bin '
            "has the colour of the worst mark in it (hover for its counts)</p>\n"
        )
    for x, text in labels:
        yield f'<text x="{x:.2f}" y="{top + height + 14}">{text}</text>'
    yield (f'<text x="{_WIDTH}" y="{top + height + 14}" text-anchor="end">{high}</text>\n</svg>\n')
    yield '<div class="legend">'
    for mark, colour in MARK_COLOURS.items():
        if totals[mark] or mark in (Mark.RECEIVED, Mark.MISSING):
            yield (
                f'<span><span class="swatch" style="background:{colour}"></span>'
                f"{mark.value} {totals[mark]:,}</span>"
            )
    yield "</div>\n" + note


def _layout(runs: Sequence[SequenceRun]) -> list[tuple[float, float, SequenceRun]]:
    """Return each run's x and width: by count, with a minimum for every non-received run.

    Sequences between two runs that are not adjacent take no room: the map is the runs.
    """
    minimum = min(_MIN_RUN, _WIDTH * 0.5 / max(1, len(runs)))
    forced = [False] * len(runs)
    scale = 0.0
    for _ in range(8):  # the runs held at the minimum, until the scale settles
        free = sum(r.count for r, f in zip(runs, forced, strict=True) if not f)
        room = _WIDTH - minimum * sum(forced)
        scale = room / free if free else 0.0
        changed = False
        for i, run in enumerate(runs):
            held = run.mark is not Mark.RECEIVED and run.count * scale < minimum
            if held != forced[i]:
                forced[i] = held
                changed = True
        if not changed:
            break
    out = []
    x = 0.0
    for run, held in zip(runs, forced, strict=True):
        width = minimum if held else run.count * scale
        out.append((x, width, run))
        x += width
    if out and x > 0:  # rounding: end exactly at the right edge
        factor = _WIDTH / x
        out = [(x0 * factor, w * factor, r) for x0, w, r in out]
    return out


#: The order in which a bin takes the colour of the worst mark in it.
_SEVERITY = (Mark.WRONG, Mark.MISSING, Mark.DUPLICATED, Mark.EXTRA, Mark.RECEIVED)


def _binned(runs: Sequence[SequenceRun], top: int, height: int) -> Iterator[str]:
    """Draw a map of too many runs as bins of sequences (one per two SVG units)."""
    total = sum(r.count for r in runs)
    bins = _WIDTH // 2
    per_bin = max(1, math.ceil(total / bins))
    width = _WIDTH / math.ceil(total / per_bin)
    counts: dict[Mark, int] = {}
    done = 0  # sequences laid so far, in order of the runs
    bin_first: int | None = None
    position = 0
    for run in runs:
        first, left = run.first, run.count
        while left:
            take = min(left, per_bin - done)
            if bin_first is None:
                bin_first = first
            counts[run.mark] = counts.get(run.mark, 0) + take
            done += take
            first += take
            left -= take
            if done == per_bin:
                yield _bin(position, width, top, height, bin_first, first - bin_first, counts)
                position += 1
                counts, done, bin_first = {}, 0, None
    if done and bin_first is not None:
        yield _bin(position, width, top, height, bin_first, done, counts)


def _bin(
    position: int, width: float, top: int, height: int, first: int, span: int,
    counts: Mapping[Mark, int],
) -> str:  # fmt: skip
    worst = next(m for m in _SEVERITY if counts.get(m))
    title = f"{first}-{first + span - 1}: " + ", ".join(
        f"{counts[m]:,} {m.value}" for m in _SEVERITY if counts.get(m)
    )
    return (
        f'<rect x="{position * width:.2f}" y="{top}" width="{width:.2f}" height="{height}" '
        f'fill="{MARK_COLOURS[worst]}" data-mark="{worst.value}" data-first="{first}" '
        f'data-count="{span}" data-binned="1"><title>{_e(title)}</title></rect>\n'
    )


# ---------------------------------------------------------------------- the timeline


def _request_label(request: Mapping[str, Any]) -> str:
    kind = request.get("call_type")
    start = request.get("start", 0)
    count = request.get("count", 0)
    if kind == STREAM_ALL:
        return "stream"
    if kind == RESEND:
        return f"resend {start}"
    if kind == HELLO:
        return "hello"
    if kind == RESEND_RANGE:
        return f"range {start}+{count}"
    if kind == SUBSCRIBE:
        return f"subscribe {start}"
    return "a request" if kind is None else f"unknown callType {kind}"


def _number(value: Any, default: float = 0.0) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


def _nice_step(span: float) -> float:
    """Return a round step for about six ticks over ``span`` seconds."""
    raw = span / 6 if span > 0 else 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return float(factor * power)
    return 10.0 * power


def _tick_label(value: float, step: float) -> str:
    if step >= 1:
        return f"{value:.0f} s"
    if step >= 0.1:
        return f"{value:.1f} s"
    return f"{value * 1000:.0f} ms"


def _timeline(result: ScenarioResult) -> Iterator[str]:
    entries = [e for e in result.timeline if isinstance(e, Mapping)]
    shown = entries[:MAX_LANES]
    times: list[float] = []
    for entry in shown:
        times.append(_number(entry.get("opened")))
        if entry.get("closed") is not None:
            times.append(_number(entry.get("closed")))
        times.extend(
            _number(r.get("at")) for r in entry.get("requests") or () if isinstance(r, Mapping)
        )
        times.extend(_number(p[0]) for p in entry.get("packets") or () if _is_packet(p))
        times.extend(_number(t) for t in entry.get("info_frames") or ())
    # Seconds since the scenario started; a trace of clock readings instead (later than
    # the scenario could last) is drawn from its first connection on.
    origin = 0.0
    if times and min(times) > max(result.duration, result.time_limit) + 1:
        origin = min(times)
    end = max([result.duration, *(t - origin for t in times), 1e-3])
    left, right = 150.0, 20.0
    lane, top = 46, 4
    plot = _WIDTH - left - right

    def x_of(t: float) -> float:
        return left + plot * min(max(t, 0.0), end) / end

    height = top + lane * len(shown) + 34
    yield (
        f'<svg class="timeline" viewBox="0 0 {_WIDTH} {height}" role="img" '
        'aria-label="the timeline of the connections">\n'
    )
    step = _nice_step(end)
    axis_y = top + lane * len(shown) + 14
    tick = 0.0
    while tick <= end + step * 1e-9:
        x = x_of(tick)
        yield (
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{axis_y}" stroke="#eaeef2"/>'
            f'<text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle">'
            f"{_tick_label(tick, step)}</text>\n"
        )
        tick += step
    for index, entry in enumerate(shown):
        yield from _lane(entry, index, top + lane * index, x_of, end, origin)
    yield "</svg>\n" + _TIMELINE_LEGEND
    if len(entries) > len(shown):
        yield f'<p class="note">and {len(entries) - len(shown):,} more connections not drawn</p>\n'


_TIMELINE_LEGEND = (
    '<div class="legend"><span><span class="swatch" style="background:#d0d7de"></span>'
    "a connection, open</span>"
    '<span><span class="swatch" style="background:#0969da"></span>a request</span>'
    '<span><span class="swatch" style="background:#1a7f37"></span>packets answered</span>'
    '<span><span class="swatch" style="background:#1a73e8;border-radius:50%"></span>'
    "an info frame</span><span>(hover for details)</span></div>\n"
)


def _is_packet(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) >= 2


def _lane(
    entry: Mapping[str, Any],
    index: int,
    y: int,
    x_of: Callable[[float], float],
    end: float,
    origin: float,
) -> Iterator[str]:
    number = entry.get("number", index + 1)
    opened = _number(entry.get("opened"), origin) - origin
    closed_at = entry.get("closed")
    closed = end if closed_at is None else _number(closed_at, end + origin) - origin
    outcome = str(entry.get("outcome", "") or ("still open" if closed_at is None else ""))
    requests = [r for r in entry.get("requests") or () if isinstance(r, Mapping)]
    packets = [p for p in entry.get("packets") or () if _is_packet(p)]
    info = [_number(t, origin) - origin for t in entry.get("info_frames") or ()]
    requests_total = int(_number(entry.get("requests_total"), len(requests)))
    packets_total = int(_number(entry.get("packets_total"), len(packets)))
    bar_y = y + 30
    x0, x1 = x_of(opened), x_of(closed)
    title = (
        f"connection {number}: opened at {opened:.3f} s, "
        + (f"closed at {closed:.3f} s" if closed_at is not None else "not closed")
        + (f" ({outcome})" if outcome else "")
        + f"; {requests_total:,} requests, {packets_total:,} packets answered"
        + (f", {len(info)} info frames" if info else "")
    )
    label = f"#{number}" + (f" {outcome}" if outcome else "")
    if len(label) > 24:
        label = label[:23] + "\u2026"
    yield (
        f'<g class="connection" data-number="{_e(number)}">'
        f'<text class="lane-label" x="4" y="{bar_y + 8}">{_e(label)}'
        f"<title>{_e(title)}</title></text>\n"
        f'<rect x="{x0:.1f}" y="{bar_y}" width="{max(x1 - x0, 1.5):.1f}" height="10" rx="3" '
        f'fill="#d0d7de"><title>{_e(title)}</title></rect>\n'
    )
    # The packets answered: a tick per SVG unit at most (the sequences on hover).
    buckets: dict[int, list[int]] = {}
    for packet in packets:
        sequence = int(_number(packet[1]))
        bucket = buckets.setdefault(
            round(x_of(_number(packet[0], origin) - origin)), [sequence, sequence, 0]
        )
        bucket[0] = min(bucket[0], sequence)
        bucket[1] = max(bucket[1], sequence)
        bucket[2] += 1
    for tick, (low, high, n) in sorted(buckets.items()):
        what = f"seq {low}" if n == 1 else f"{n} packets, seq {low}-{high}"
        yield (
            f'<line class="packet" x1="{tick}" y1="{bar_y}" x2="{tick}" y2="{bar_y + 10}" '
            f'stroke="#1a7f37" stroke-width="1"><title>{_e(what)}</title></line>\n'
        )
    for t in info:
        yield (
            f'<circle cx="{x_of(t):.1f}" cy="{bar_y + 5}" r="3" fill="#1a73e8">'
            f"<title>info frame at {t:.3f} s</title></circle>\n"
        )
    # The requests: a marker each, labelled in the first of two rows above it that has
    # room for the label (none has: the tooltip only).
    free_from = [-1.0, -1.0]
    for request in requests:
        at = _number(request.get("at"), origin) - origin
        x = x_of(at)
        text = _request_label(request)
        yield (
            f'<path class="request" d="M{x:.1f} {bar_y - 1}l-4 -6h8z" fill="#0969da">'
            f"<title>{_e(text)} at {at:.3f} s</title></path>\n"
        )
        start = x - 4
        for row, free in enumerate(free_from):
            if start >= free and start + 6.2 * len(text) <= _WIDTH:
                yield f'<text x="{start:.1f}" y="{bar_y - 10 - 11 * row}">{_e(text)}</text>\n'
                free_from[row] = start + 6.2 * len(text) + 8
                break
    if requests_total > len(requests):
        more = requests_total - len(requests)
        yield f'<text x="4" y="{bar_y + 21}">+{more:,} requests not traced</text>\n'
    yield "</g>\n"
