"""The Grafana dashboard asks for metrics that exist, in PromQL that parses; the names lint.

docs/grafana/packetcore.json is read as Grafana reads it: each query's template variables
are put in (as Grafana does before it asks Prometheus), the query is parsed by a real
PromQL parser (promql-parser, the Rust one of GreptimeDB), and every metric and label it
names must be one that a real server, a real proxy or the follow exposes. The server's
and the proxy's are scraped from ones running here; the follow's come from
``packetcore.client.follow_metrics.METRICS`` once that module exists, and until then
from FOLLOW_METRICS below, the spec the follow is written to. ``promtool check metrics``
(Prometheus's own linter of metric names) reads the same scrapes, where it is installed.
"""

from __future__ import annotations

import importlib
import itertools
import json
import re
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from packetcore.faults.model import FaultPlan, Faults
from packetcore.faults.proxy import Proxy
from packetcore.net.metrics import serve_metrics
from packetcore.protocol import stream_all_request
from packetcore.server.server import Server
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from serverutil import TIMEOUT, recv_all

# The dashboard and the names depend on no engine: run once, on the compiled one.
pytestmark = pytest.mark.engine_neutral

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana" / "packetcore.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"

#: The follow's metrics (``packetcore-fetch --follow --metrics-port``): name, type, help,
#: label names. The module that exports them, once it lands, must say the same
#: (test_the_follow_exports_the_metrics_of_the_spec); until then this list stands for it.
FOLLOW_METRICS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("packetcore_follow_packets_total", "counter", "Packets handed on in order.", ()),
    (
        "packetcore_follow_packets_repaired_total",
        "counter",
        "Packets the repair connection brought.",
        (),
    ),
    (
        "packetcore_follow_gaps_total",
        "counter",
        "Gaps (runs of missing sequences) detected.",
        (),
    ),
    ("packetcore_follow_gaps_repaired_total", "counter", "Gaps repaired.", ()),
    ("packetcore_follow_gaps_open", "gauge", "Gaps asked for and not yet repaired.", ()),
    (
        "packetcore_follow_repair_requests_total",
        "counter",
        "Range requests sent, by why.",
        ("reason",),
    ),
    (
        "packetcore_follow_reconnects_total",
        "counter",
        "Reconnects, by connection.",
        ("connection",),
    ),
    ("packetcore_follow_duplicates_total", "counter", "Duplicate packets.", ()),
    ("packetcore_follow_conflicts_total", "counter", "Conflicting packets.", ()),
    ("packetcore_follow_invalid_total", "counter", "Invalid packets.", ()),
    ("packetcore_follow_delivered_sequence", "gauge", "Last sequence handed on.", ()),
    (
        "packetcore_follow_published_sequence",
        "gauge",
        "Highest sequence the server said it published.",
        (),
    ),
    ("packetcore_follow_lag_packets", "gauge", "Packets behind the server.", ()),
    ("packetcore_follow_lag_seconds", "gauge", "Seconds behind the server.", ()),
    (
        "packetcore_follow_repair_latency_seconds",
        "histogram",
        "From a gap seen to its repair.",
        (),
    ),
    (
        "packetcore_follow_publication_latency_seconds",
        "histogram",
        "From a packet's publication, by the server's clock, to its being handed on.",
        (),
    ),
)
#: The label values the spec gives, for the follow's text that promtool reads.
FOLLOW_LABEL_VALUES = {
    "reason": ("range", "tail", "again", "reconnect"),
    "connection": ("subscription", "repair"),
}
FOLLOW_MODULE = "packetcore.client.follow_metrics"

#: Grafana's own variables, as a query of a one-hour range would have them.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
#: A template variable: $name, ${name}, ${name:format} or [[name]].
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
#: Labels every scraped series has (Prometheus adds them), whatever the family.
TARGET_LABELS = frozenset({"job", "instance"})


# -- what exists -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """A metric family: its type and the names of its labels."""

    name: str
    type: str
    labels: frozenset[str] = frozenset()

    def series(self) -> dict[str, frozenset[str]]:
        """Return the names of the series it is queried by, each with its label names."""
        if self.type == "counter":
            base = self.name.removesuffix("_total")
            return {base + "_total": self.labels}
        if self.type == "histogram":
            return {
                self.name + "_bucket": self.labels | {"le"},
                self.name + "_sum": self.labels,
                self.name + "_count": self.labels,
            }
        if self.type == "summary":
            return {
                self.name: self.labels | {"quantile"},
                self.name + "_sum": self.labels,
                self.name + "_count": self.labels,
            }
        return {self.name: self.labels}


def families_of(text: str) -> dict[str, Family]:
    """Return the families of a scrape by name, with the labels their samples have."""
    found = {}
    for family in text_string_to_metric_families(text):
        labels = {name for sample in family.samples for name in sample.labels}
        labels -= {"le", "quantile"}
        name = family.name
        if family.type == "counter":  # the parser may give a counter's name without _total
            name = name.removesuffix("_total") + "_total"
        found[name] = Family(name, family.type, frozenset(labels))
    return found


@dataclass
class Exposed:
    """The series a program exposes, by name, with their label names."""

    families: dict[str, Family]
    series: dict[str, frozenset[str]] = field(init=False)

    def __post_init__(self) -> None:
        self.series = {}
        for family in self.families.values():
            self.series.update(family.series())


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as response:
        assert response.status == 200
        text: str = response.read().decode()
    return text


def stream_through(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(stream_all_request())
        return recv_all(sock)


@dataclass
class Scrapes:
    """The /metrics text of a server and of a proxy that each injected faults."""

    server: str
    proxy: str


@pytest.fixture(scope="module")
def scrapes() -> Iterator[Scrapes]:
    # Faults on both, and a stream through each, so that the faults family has samples
    # and its label (kind) is seen; the server's stats also carry the optional counters.
    server_faults = FaultPlan(Faults(loss=0.5), seed=1)
    proxy_faults = FaultPlan(Faults(loss=0.3, duplicate=0.3), seed=2)
    with Server(host="127.0.0.1", port=0, drop=0.0, seed=1, faults=server_faults) as server:
        proxy = Proxy(("127.0.0.1", server.port), proxy_faults)
        with (
            proxy,
            serve_metrics("127.0.0.1", 0, lambda: server.stats) as server_metrics,
            serve_metrics("127.0.0.1", 0, lambda: proxy.stats) as proxy_metrics,
        ):
            stream_through(proxy.port)
            assert proxy.wait_idle()
            yield Scrapes(server=scrape(server_metrics.port), proxy=scrape(proxy_metrics.port))


def follow_module_metrics() -> list[tuple[Any, ...]] | None:
    """Return the follow module's METRICS as a list, or None while there is no module."""
    try:
        module = importlib.import_module(FOLLOW_MODULE)
    except ModuleNotFoundError as error:
        if error.name not in (FOLLOW_MODULE, FOLLOW_MODULE.rpartition(".")[0]):
            raise  # the module is there and imports something missing: a real failure
        return None
    return [tuple(entry) for entry in module.METRICS]


def family_name(entry: tuple[Any, ...]) -> str:
    """Return the family name of a (name, type, ...) entry: a counter's with _total."""
    name: str = entry[0]
    return name.removesuffix("_total") + "_total" if entry[1] == "counter" else name


def follow_families(entries: Iterable[tuple[Any, ...]]) -> dict[str, Family]:
    """Return the families of (name, type, help[, labels]) entries by family name."""
    found = {}
    for entry in entries:
        labels = frozenset(entry[3]) if len(entry) > 3 else frozenset()
        found[family_name(entry)] = Family(family_name(entry), entry[1], labels)
    return found


def follow_spec() -> list[tuple[Any, ...]]:
    """The follow's metrics: the module's once it exists, FOLLOW_METRICS until then.

    A module's entry without label names takes those FOLLOW_METRICS gives its family.
    """
    module = follow_module_metrics()
    if module is None:
        return list(FOLLOW_METRICS)
    spec = {family.name: family.labels for family in follow_families(FOLLOW_METRICS).values()}
    return [
        entry if len(entry) > 3 else (*entry, tuple(sorted(spec.get(family_name(entry), ()))))
        for entry in module
    ]


@pytest.fixture(scope="module")
def exposed(scrapes: Scrapes) -> dict[str, Exposed]:
    """What each section of the dashboard may ask for: its program's series."""
    return {
        "server": Exposed(families_of(scrapes.server)),
        "proxy": Exposed(families_of(scrapes.proxy)),
        "follow": Exposed(follow_families(follow_spec())),
    }


# -- what the dashboard asks for ---------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def section_of(row_title: str) -> str:
    for section in ("server", "proxy", "follow"):
        if row_title.lower().startswith(section):
            return section
    raise AssertionError(f"a row of no known section: {row_title!r}")


@dataclass
class Query:
    where: str  #: the panel and target, or the variable
    expr: str  #: as written, template variables and all
    section: str | None  #: server, proxy or follow; None: any (a variable's query)


def queries(board: dict[str, Any]) -> list[Query]:
    """Every PromQL expression of the dashboard: the panels' and the variables'."""
    found = []
    section = None
    for panel in panels(board):
        if panel["type"] == "row":
            section = section_of(panel["title"])
            continue
        for target in panel.get("targets", []):
            where = f"panel {panel['id']} ({panel['title']}) {target.get('refId')}"
            found.append(Query(where, target["expr"], section))
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        # Grafana's Prometheus variable queries: label_values([selector, ]label) and
        # query_result(expr); the PromQL is inside.
        inner = re.fullmatch(r"label_values\((?:(.+),\s*)?(\w+)\)|query_result\((.+)\)", query)
        assert inner, f"variable {variable['name']}: a query of no known kind: {query}"
        expr = inner.group(1) or inner.group(3)
        if expr:
            found.append(Query(f"variable {variable['name']}", expr, None))
    return found


def variables(board: dict[str, Any]) -> set[str]:
    return {variable["name"] for variable in board["templating"]["list"]}


def interpolate(expr: str, defined: set[str]) -> str:
    """Put in the template variables as Grafana would: a duration, or a regex of all values."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name in GRAFANA_VARIABLES:
            return GRAFANA_VARIABLES[name]
        assert name in defined, f"${name} is no variable of the dashboard"
        return ".+"

    return VARIABLE.sub(value, expr)


@dataclass
class Asked:
    """What one expression names: series, __name__ regexes and labels."""

    series: set[str] = field(default_factory=set)
    name_patterns: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)


def asked(expr: str) -> Asked:
    """Parse ``expr`` (raises ValueError if it is not PromQL) and return what it names."""
    found = Asked()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                found.series.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    found.name_patterns.add(matcher.value)
                else:
                    found.labels.add(matcher.name)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier:
            found.labels.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier:
            if node.modifier.matching:
                found.labels.update(node.modifier.matching.labels)
            found.labels.update(node.modifier.group_labels or ())

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


# -- the tests ---------------------------------------------------------------------------------


def test_every_query_parses_as_promql() -> None:
    board = dashboard()
    defined = variables(board)
    found = queries(board)
    assert len(found) > 40  # the targets and the variables were all found
    errors = []
    for query in found:
        try:
            promql_parser.parse(interpolate(query.expr, defined))
        except ValueError as error:
            errors.append(f"{query.where}: {error}\n    {query.expr}")
    assert not errors, "\n".join(errors)


def test_the_parser_refuses_what_prometheus_refuses() -> None:
    # The parse above is worth something only if a broken query fails it.
    for broken in (
        "rate(packetcore_connections_total)",  # rate of a vector, not a range
        "sum by (instance) (rate(packetcore_connections_total[1m])",  # unclosed
        "rate(packetcore_connections_total[$__rate_interval])",  # a variable left in
        "rates(packetcore_connections_total[1m])",  # no such function
    ):
        with pytest.raises(ValueError):
            promql_parser.parse(broken)


def test_every_metric_and_label_a_query_names_exists(exposed: dict[str, Exposed]) -> None:
    board = dashboard()
    defined = variables(board)
    everything: dict[str, frozenset[str]] = {}
    for program in exposed.values():
        everything.update(program.series)
    errors = []
    for query in queries(board):
        series = exposed[query.section].series if query.section else everything
        names = asked(interpolate(query.expr, defined))
        for name in sorted(names.series - series.keys()):
            errors.append(f"{query.where}: no {query.section or 'program'} exposes {name}")
        for pattern in names.name_patterns:
            if not any(re.fullmatch(pattern, name) for name in everything):
                errors.append(f"{query.where}: no series matches __name__=~{pattern!r}")
        allowed = set(TARGET_LABELS)
        for name in names.series & series.keys():
            allowed |= series[name]
        if names.name_patterns:
            allowed |= {label for labels in everything.values() for label in labels}
        for label in sorted(names.labels - allowed):
            errors.append(f"{query.where}: no series it reads has the label {label!r}")
    assert not errors, "\n".join(errors)


def test_every_metric_has_a_panel(exposed: dict[str, Exposed]) -> None:
    # A counter added to the server (or the follow) shows up as missing here.
    board = dashboard()
    defined = variables(board)
    shown: dict[str, set[str]] = {section: set() for section in exposed}
    for query in queries(board):
        if query.section:
            shown[query.section] |= asked(interpolate(query.expr, defined)).series
    for section, program in exposed.items():
        for family in program.families.values():
            assert shown[section] & family.series().keys(), (
                f"the {section}'s {family.name} is on no panel of its row"
            )


def test_the_scrapes_were_of_every_kind_of_family(scrapes: Scrapes) -> None:
    # The checks above are only as good as the scrapes: the fault label was seen, and
    # the proxy lacks what only a server has (the dashboard's proxy_job relies on it).
    server, proxy = families_of(scrapes.server), families_of(scrapes.proxy)
    assert server["packetcore_faults_injected_total"].labels == {"kind"}
    assert proxy["packetcore_faults_injected_total"].labels == {"kind"}
    assert "packetcore_refused_connections_total" in server
    assert "packetcore_refused_connections_total" not in proxy
    assert server["packetcore_active_connections"].type == "gauge"


def test_the_follow_exports_the_metrics_of_the_spec() -> None:
    # What the module must be: packetcore.client.follow_metrics.METRICS, an iterable of
    # tuples (name, type, help) or (name, type, help, label_names); type "counter",
    # "gauge" or "histogram"; a counter named with or without _total, as
    # prometheus-client takes it. It must name the families of FOLLOW_METRICS, with
    # their types, and their labels where it gives them.
    module = follow_module_metrics()
    if module is None:
        pytest.skip(f"no {FOLLOW_MODULE} yet: the dashboard is checked against FOLLOW_METRICS")
    ours = follow_families(FOLLOW_METRICS)
    for entry in module:
        assert len(entry) in (3, 4), f"{entry!r}: not (name, type, help[, labels])"
        assert entry[1] in ("counter", "gauge", "histogram"), f"{entry!r}: type {entry[1]!r}"
        assert isinstance(entry[2], str) and entry[2], f"{entry!r}: no help text"
        if len(entry) == 4 and family_name(entry) in ours:
            assert set(entry[3]) == ours[family_name(entry)].labels, f"{entry!r}: labels"
    theirs = follow_families(module)
    assert len(theirs) == len(module), "a family named twice"
    assert {(f.name, f.type) for f in theirs.values()} == {(f.name, f.type) for f in ours.values()}


def test_the_docs_list_the_follows_metrics() -> None:
    # docs/metrics.md: a table of the follow's metrics, one row each, with its type.
    text = METRICS_DOC.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(packetcore_follow_\w+)(?:\{[^}]*\})?` \| (\w+) \|", text, re.M)
    listed = dict(rows)
    assert len(listed) == len(rows), "a follow metric listed twice"
    assert listed == {f.name: f.type for f in follow_families(follow_spec()).values()}


def test_the_dashboard_is_one_grafana_imports() -> None:
    board = dashboard()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 39
    assert board["uid"] and board["title"] and board.get("id") is None
    templating = {variable["name"]: variable for variable in board["templating"]["list"]}
    source = templating["datasource"]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    prometheus = {"type": "prometheus", "uid": "${datasource}"}
    for variable in templating.values():
        if variable["type"] == "query":
            assert variable["datasource"] == prometheus, variable["name"]
    for name in ("server_job", "proxy_job", "follow_job"):
        # All is the alternation of the jobs found: a catch-all would mix the programs.
        assert not templating[name].get("allValue"), name
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    taken: set[tuple[int, int]] = set()
    for panel in panels(board):
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in "hwxy"), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}  # fmt: skip
        assert not cells & taken, f"panel {panel['id']} ({panel['title']}) overlaps another"
        taken |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == prometheus, panel["title"]
        assert panel["targets"], f"panel {panel['title']} has no query"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), f"panel {panel['title']}: refIds repeat"
        for target in panel["targets"]:
            assert target["datasource"] == prometheus and target["expr"].strip()
    sections = [section_of(panel["title"]) for panel in board["panels"] if panel["type"] == "row"]
    assert sections == ["server", "proxy", "follow"]


# -- promtool: Prometheus's linter of metric names ---------------------------------------------

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (.ci/run takes it from Debian's prometheus package)",
)


def promtool_check(text: str) -> tuple[int, str]:
    """Return promtool check metrics' exit status and what it said of ``text``."""
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


class _Families:
    """A collector yielding fixed families (the follow's, for promtool to read)."""

    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        yield from self._families


def follow_text(entries: Iterable[tuple[Any, ...]]) -> str:
    """The follow's metrics as prometheus-client writes them, a sample in each."""
    families: list[Any] = []
    for entry in entries:
        name, kind, text = entry[0], entry[1], entry[2]
        labels = list(entry[3]) if len(entry) > 3 else []
        if kind == "histogram":
            buckets = [("0.001", 1.0), ("0.01", 3.0), ("+Inf", 4.0)]
            families.append(HistogramMetricFamily(name, text, buckets=buckets, sum_value=0.05))
            continue
        family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
            name, text, labels=labels
        )
        if labels:
            for values in itertools.product(
                *(FOLLOW_LABEL_VALUES.get(label, ("x",)) for label in labels)
            ):
                family.add_metric(list(values), 1.0)
        else:
            family.add_metric([], 1.0)
        families.append(family)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry).decode()


@needs_promtool
def test_promtool_finds_nothing_amiss_in_the_names(scrapes: Scrapes) -> None:
    for who, text in (
        ("server", scrapes.server),
        ("proxy", scrapes.proxy),
        ("follow", follow_text(follow_spec())),
    ):
        status, said = promtool_check(text)
        assert (status, said) == (0, ""), f"promtool check metrics on the {who}'s:\n{said}"


@needs_promtool
def test_promtool_does_flag_a_bad_name() -> None:
    # The check above is worth something only if promtool reads what it is given.
    status, said = promtool_check(
        "# HELP packetcore_things Things.\n# TYPE packetcore_things counter\npacketcore_things 1\n"
    )
    assert status != 0 and 'should have "_total" suffix' in said, said
