"""The installed commands: --version, ``packetcore COMMAND``, info, convert, --progress and
--log-format json, run as a user runs them (subprocesses of the console scripts)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from packetcore.cli.convert import convert
from packetcore.cli.info import summarize
from packetcore.faults.model import FaultPlan, Faults
from packetcore.io.feeds import synthetic
from packetcore.io.formats import FORMATS, open_writer
from packetcore.server.server import Server

import packetcore

BIN = Path(sys.executable).parent
VERSION = importlib.metadata.version("packetcore")
#: Sequences left out of the test feed: gaps at 5-6, 100 and 501-503.
HOLES = (5, 6, 100, 501, 502, 503)


def command(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run an installed console script (``args[0]``) with the rest of ``args``."""
    name, *rest = args
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed beside {sys.executable}: run make install")
    return subprocess.run(
        [str(path), *rest], capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture(scope="module")
def gappy() -> packetcore.Packets:
    feed = synthetic(1000, seed=3)
    keep = np.isin(feed.sequence, HOLES, invert=True)
    return feed[np.flatnonzero(keep)]


@pytest.fixture(scope="module")
def files(gappy: packetcore.Packets, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The gappy feed written in every format."""
    pytest.importorskip("pyarrow")
    where = tmp_path_factory.mktemp("feeds")
    paths = {}
    for form in FORMATS:
        paths[form] = where / f"feed.{form}"
        packetcore.write(paths[form], gappy)
    return paths


# -- --version and the packetcore command -------------------------------------------------------


@pytest.mark.engine_neutral
@pytest.mark.parametrize(
    "argv",
    [
        ["packetcore-serve"], ["packetcore-fetch"], ["packetcore-proxy"], ["packetcore-check"],
        ["packetcore"], ["packetcore", "serve"], ["packetcore", "fetch"],
        ["packetcore", "proxy"], ["packetcore", "check"],
        ["packetcore", "info"], ["packetcore", "convert"], ["packetcore", "demo"],
    ],
)  # fmt: skip
def test_every_command_says_its_version(argv: list[str]) -> None:
    result = command(*argv, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{' '.join(argv)} {VERSION}\n"
    assert packetcore.__version__ == VERSION


@pytest.mark.engine_neutral
def test_python_m_packetcore_says_its_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "packetcore", "--version"], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, f"python -m packetcore {VERSION}\n")


@pytest.mark.engine_neutral
def test_packetcore_runs_each_command_under_its_own_name() -> None:
    listing = command("packetcore", "--help")
    assert listing.returncode == 0
    assert listing.stdout.startswith(
        "usage: packetcore {serve,fetch,proxy,check,info,convert,demo}"
    )
    for name in ("serve", "fetch", "proxy", "check", "info", "convert", "demo"):
        result = command("packetcore", name, "--help")
        assert result.returncode == 0, (name, result.stderr)
        assert result.stdout.startswith(f"usage: packetcore {name} [-h]"), name
    unknown = command("packetcore", "fletch")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("packetcore: error: unknown command 'fletch'")
    nothing = command("packetcore")
    assert (nothing.returncode, nothing.stdout) == (2, "")


# -- packetcore info ----------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMATS)
def test_info_says_count_sequences_gaps_and_format(form: str, files: dict[str, Path]) -> None:
    result = command("packetcore", "info", str(files[form]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"file: {files[form]}",
        f"format: {form}",
        "packets: 994",
        "sequences: 1..1000 (in order)",
        "duplicates: 0",
        "gaps: 3 (6 sequences missing): 5-6, 100, 501-503",
    ]
    as_json = json.loads(command("packetcore", "info", "--json", str(files[form])).stdout)
    assert as_json["first_gaps"] == [[5, 6], [100, 100], [501, 503]]
    assert (as_json["packets"], as_json["first"], as_json["last"]) == (994, 1, 1000)


def test_info_of_a_file_out_of_order_counts_duplicates(
    gappy: packetcore.Packets, tmp_path: Path
) -> None:
    order = np.r_[np.arange(500, len(gappy)), np.arange(0, 500), np.arange(10, 20)]
    path = tmp_path / "shuffled.bin"
    with open(path, "wb") as file:
        writer = open_writer(file, "bin")
        writer.write(gappy[order])
        writer.close()
    summary = summarize(str(path))
    assert (summary.packets, summary.duplicates, summary.in_order) == (1004, 10, False)
    assert (summary.gaps, summary.missing) == (3, 6)
    assert summary.ranges == [(5, 6), (100, 100), (501, 503)]


def test_info_names_only_the_first_gaps(tmp_path: Path) -> None:
    feed = synthetic(100, seed=1)
    path = tmp_path / "odd.ndjson"
    packetcore.write(path, feed[np.flatnonzero(feed.sequence % 2)])  # 49 gaps
    lines = command("packetcore", "info", str(path)).stdout.splitlines()
    assert lines[-1] == (
        "gaps: 49 (49 sequences missing): 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, ... (39 more)"
    )


def test_info_failures_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"symbol": "AAPL"}]')
    for path, message in [
        (tmp_path / "nowhere.json", f"cannot read {tmp_path / 'nowhere.json'}: No such file"),
        (bad, f"{bad}: record 0, field 'buysellindicator'"),
    ]:
        result = command("packetcore", "info", str(path))
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith(f"packetcore info: error: {message}"), result.stderr
    assert command("packetcore", "info").returncode == 2


@pytest.mark.parametrize("argv", [["info"], ["convert", "-q", "-", "--format", "csv"]])
def test_a_reader_of_stdout_that_left_is_a_normal_end(
    argv: list[str], files: dict[str, Path]
) -> None:
    # `packetcore info FILE | head -0`, without the race: the reader is gone before it writes.
    read, write = os.pipe()
    os.close(read)
    name, *rest = argv
    try:
        result = subprocess.run(
            [str(BIN / "packetcore"), name, str(files["bin"]), *rest], stdout=write,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write)
    assert (result.returncode, result.stderr) == (0, "")


# -- packetcore convert -------------------------------------------------------------------------


@pytest.mark.parametrize("source", FORMATS)
def test_convert_any_format_to_any_other(
    source: str, files: dict[str, Path], gappy: packetcore.Packets, tmp_path: Path
) -> None:
    for target in FORMATS:
        out = tmp_path / f"out.{target}"
        assert convert(str(files[source]), str(out)) == len(gappy)
        assert packetcore.read(out).to_records() == gappy.to_records(), (source, target)
        assert out.read_bytes() == files[target].read_bytes(), (source, target)


def test_the_convert_command(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "named.txt"
    result = command("packetcore", "convert", str(files["json"]), str(out), "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"packetcore convert: 994 packets -> {out}\n"
    assert out.read_bytes() == files["csv"].read_bytes()
    streamed = command("packetcore", "convert", "-q", str(files["bin"]), "-", "--format", "ndjson")
    assert (streamed.returncode, streamed.stderr) == (0, "")
    assert streamed.stdout == files["ndjson"].read_text()


def test_a_failed_convert_leaves_the_output_as_it_was(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"symbol": "AAPL", "buysellindicator": "B", "quantity": 1, "price": 1, '
                   '"packetSequence": 1}\n{"symbol": "AAPL"}\n')  # fmt: skip
    out = tmp_path / "out.json"
    out.write_text("before")
    result = command("packetcore", "convert", str(bad), str(out))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "left as it was" in result.stderr, result.stderr
    assert out.read_text() == "before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ndjson", "out.json"]
    missing = command("packetcore", "convert", str(tmp_path / "none.bin"), str(out))
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    assert command("packetcore", "convert", str(bad)).returncode == 2


def test_convert_refuses_a_format_that_contradicts_the_target_name(
    files: dict[str, Path], tmp_path: Path
) -> None:
    # The fetch's rule: -o x.json --format csv is a usage error, and nothing is written.
    out = tmp_path / "x.json"
    result = command("packetcore", "convert", str(files["bin"]), str(out), "--format", "csv")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "contradicts" in result.stderr, result.stderr
    assert not out.exists()
    # A name of no known format takes --format (or json, as a fetch's output does).
    other = tmp_path / "x.txt"
    assert command("packetcore", "convert", str(files["bin"]), str(other)).returncode == 0
    assert other.read_bytes() == files["json"].read_bytes()


def test_a_convert_that_cannot_create_its_output_names_it(
    files: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / "nowhere" / "x.json"
    result = command("packetcore", "convert", str(files["bin"]), str(target))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert str(target) in result.stderr and ".tmp" not in result.stderr, result.stderr


# -- --progress and --log-format json ------------------------------------------------------------


@pytest.fixture(scope="module")
def slow() -> Server:
    """A server whose 100,000 packets take about 1.7 s to arrive (1 MB/s)."""
    faults = FaultPlan(Faults(bandwidth=1e6), seed=1)
    with Server(synthetic(100_000, seed=2), host="127.0.0.1", port=0, drop=0.0,
                faults=faults) as server:  # fmt: skip
        yield server


PROGRESS = re.compile(
    r"packetcore-fetch: progress: [\d,]+ packets in order( of 100,000 \(\d+\.\d%\))?, "
    r"[\d,]+/s, \d+\.\d s"
)


def test_progress_lines_where_stderr_is_no_terminal(slow: Server, tmp_path: Path) -> None:
    out = str(tmp_path / "p.bin")
    result = command("packetcore-fetch", "--port", str(slow.port), "-o", out, "-q",
                     "--progress", "0.2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(PROGRESS.fullmatch(line) for line in lines), lines
    assert " of 100,000 " in lines[0]
    # Without --progress a pipe gets no progress at all.
    plain = command("packetcore-fetch", "--port", str(slow.port), "-o", out, "-q")
    assert (plain.returncode, plain.stderr) == (0, "")


def test_progress_lines_of_a_follow(tmp_path: Path) -> None:
    with Server(synthetic(3000, seed=2), host="127.0.0.1", port=0, live=2000) as live:
        result = command("packetcore", "fetch", "--follow", "--port", str(live.port),
                         "-o", str(tmp_path / "f.ndjson"), "-q", "--progress", "0.2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(PROGRESS.fullmatch(line) for line in lines), lines


def test_log_format_json_is_one_object_a_record(slow: Server, tmp_path: Path) -> None:
    out = str(tmp_path / "j.json")
    result = command("packetcore-fetch", "--port", str(slow.port), "-o", out, "-v",
                     "--log-format", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    *records, summary = result.stderr.splitlines()
    assert summary.startswith("100000 packets")  # the command's own line stays text
    assert len(records) >= 2
    for line in records:
        entry = json.loads(line)
        assert set(entry) >= {"time", "level", "logger", "message"}, line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert any(json.loads(line)["logger"] == "packetcore.fetch" for line in records)


def test_serve_logs_json_through_its_queue() -> None:
    env = dict(os.environ)
    process = subprocess.Popen(
        [str(BIN / "packetcore-serve"), "--host", "127.0.0.1", "--port", "0",
         "--log-format", "json"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        entry = json.loads(first)
        assert entry["logger"] == "packetcore.server" and entry["level"] == "info", first
        listening = process.stderr.readline()
        port = int(re.search(r"listening on port (\d+)", listening).group(1))  # type: ignore[union-attr]
        fetched = command("packetcore-fetch", "--port", str(port), "-o", "-", "-q")
        assert fetched.returncode == 0
        connected = json.loads(process.stderr.readline())
        assert connected["message"].startswith("client connected: 127.0.0.1")
        process.terminate()
        _, rest = process.communicate(timeout=30)
        assert rest.splitlines()[-1].startswith("packetcore-serve: stopped by SIGTERM")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_bad_log_format_is_a_usage_error() -> None:
    result = command("packetcore-fetch", "--log-format", "xml")
    assert result.returncode == 2
    assert "invalid choice: 'xml'" in result.stderr
