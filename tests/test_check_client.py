"""packetcore-check client: each verdict from a purpose-built client, the user's files kept.

The clients are tests/clients/feedclient.py (correct by default; ``--break KIND`` makes it
fail one way) and packetcore-fetch itself, the proof that the battery is fair.
"""

from __future__ import annotations

import json
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packetcore.check.client import check_client
from packetcore.check.model import CheckRun, Level, Verdict
from packetcore.check.scenarios import SCENARIOS, scenario_seed
from packetcore.errors import UserError
from packetcore.io.feeds import book

# The check's own logic: the engine under it is tested elsewhere, on both builds.
pytestmark = pytest.mark.engine_neutral

CLIENT = Path(__file__).parent / "clients" / "feedclient.py"
REQUIRED = [s.name for s in SCENARIOS if s.level is Level.REQUIRED]
HARDENING = [s.name for s in SCENARIOS if s.level is Level.HARDENING]


def client(*args: str) -> list[str]:
    """The test client's command, connecting to ``{port}`` and writing ``{output}``."""
    return [sys.executable, str(CLIENT), "--port", "{port}", "--output", "{output}", *args]


def verdicts(run: CheckRun) -> dict[str, Verdict]:
    return {r.label: r.verdict for r in run.results}


def test_a_correct_client_passes_every_scenario_and_the_same_seed_gives_the_same_run() -> None:
    run = check_client(client(), jobs=2, level=Level.HARDENING, seed=7)
    assert verdicts(run) == {s.name: Verdict.PASS for s in SCENARIOS}, run.summary()
    assert run.passed and run.summary().startswith(f"PASSED: {len(SCENARIOS)} of {len(SCENARIOS)}")
    assert [r.seed for r in run.results] == [scenario_seed(7, s.name) for s in SCENARIOS]
    traced = {r.name: r.timeline for r in run.results}
    # The timeline shows what the client did: its first connection asked for the stream.
    assert traced["clean"][0]["requests"][0]["call_type"] == 1
    assert traced["clean"][0]["packets_total"] == 14


@pytest.mark.parametrize(
    ("broken", "scenario", "verdict", "words"),
    [
        ("split", "split-bytes", Verdict.NO_OUTPUT, "wrote no output.json"),
        ("duplicates", "duplicates", Verdict.WRONG, "duplicated"),
        ("tail", "tail-loss", Verdict.WRONG, "1 missing (14)"),
        ("unsorted", "clean", Verdict.WRONG, "13 out of order"),
        ("nothing", "clean", Verdict.NO_OUTPUT, "wrote no output.json"),
        ("crash", "clean", Verdict.CRASHED, "exit status 1: RuntimeError: the client crashed"),
        ("hang", "clean", Verdict.HUNG, "still running after the time limit of 2 s"),
    ],
)
def test_each_broken_client_gets_exactly_its_verdict(
    broken: str, scenario: str, verdict: Verdict, words: str
) -> None:
    run = check_client(
        client("--break", broken), only=["clean", scenario], jobs=2, time_limit=2.0
        if broken == "hang" else None,
    )  # fmt: skip
    result = {r.name: r for r in run.results}[scenario]
    assert result.verdict is verdict, result.reason
    assert words in result.reason
    if scenario not in ("clean", "split-bytes"):  # the fault broke it: without, it passes
        assert {r.name: r for r in run.results}["clean"].verdict is Verdict.PASS
    # A hardening scenario counts only at --level hardening.
    assert run.passed is (result.level is Level.HARDENING)


def test_a_crash_keeps_the_last_lines_of_stderr() -> None:
    run = check_client(client("--break", "crash"), only=["clean"], port=free_port())
    tail = run.results[0].details["stderr_tail"]
    assert tail[0].startswith("Traceback") and "RuntimeError" in tail[-1]


def test_a_wrong_output_names_the_first_differing_record_and_maps_the_missing_ones() -> None:
    run = check_client(client("--break", "tail"), only=["tail-loss"], port=free_port())
    result = run.results[0]
    first = result.details["first_difference"]
    assert first["position"] == 13 and first["got"] is None
    assert first["expected"]["packetSequence"] == 14
    assert [r.as_list() for r in result.sequence_map] == [["received", 1, 13], ["missing", 14, 1]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_command(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "packetcore", "check", *args], cwd=cwd, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_the_port_substitution_and_the_environment_variable(tmp_path: Path) -> None:
    # No {port}: the client reads $PACKETCORE_PORT; --output names where it writes.
    port = free_port()
    command = [sys.executable, str(CLIENT), "--output", "book.json"]
    run = check_client(command, port=port, output="book.json", cwd=tmp_path, only=["clean"])
    assert verdicts(run) == {"clean": Verdict.PASS}
    assert not (tmp_path / "book.json").exists()


def test_the_users_output_survives_a_run(tmp_path: Path) -> None:
    mine = tmp_path / "output.json"
    mine.write_text("my own work\n")
    port = free_port()
    command = [sys.executable, str(CLIENT), "--port", str(port)]
    run = check_client(command, port=port, cwd=tmp_path, only=["clean", "tail-loss"])
    assert verdicts(run) == {"clean": Verdict.PASS, "tail-loss": Verdict.PASS}
    assert mine.read_text() == "my own work\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output.json"]


def test_the_users_output_survives_a_ctrl_c(tmp_path: Path) -> None:
    mine = tmp_path / "output.json"
    mine.write_text("my own work\n")
    port = free_port()
    process = check_command(
        "client", "--port", str(port), "--only", "clean", "--", sys.executable,
        str(CLIENT), "--port", str(port), "--break", "hang", cwd=tmp_path,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not any(p.name.startswith(".output.json.") for p in tmp_path.iterdir()):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.05)
    time.sleep(0.5)  # the client is running now
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, (out, err)
    assert mine.read_text() == "my own work\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output.json"]
    assert "Traceback" not in err and "INTERRUPTED: 0 of 1 scenarios ran" in out


def test_a_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        process = check_command(
            "client", "--port", str(port), "--", sys.executable, str(CLIENT), cwd=tmp_path
        )
        _out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert err.count("\n") == 1 and f"port {port} is in use" in err


def test_a_command_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    process = check_command(
        "client", "--port", str(free_port()), "--", "no-such-client-x", cwd=tmp_path
    )
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    expected = "the client command 'no-such-client-x' is not found on the PATH"
    assert err == f"packetcore-check: error: {expected}\n"


def test_bad_options_are_usage_errors(tmp_path: Path) -> None:
    for args in (["client", "--only", "nope", "--", "true"], ["client", "--jobs", "2", "--",
                 "true"], ["client"], ["server", "nohostport"]):  # fmt: skip
        process = check_command(*args, cwd=tmp_path)
        _out, err = process.communicate(timeout=60)
        assert process.returncode == 2, (args, err)
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
            ("python -m packetcore check", "packetcore-check", "usage")
        ), err


def test_the_command_line_prints_a_line_a_scenario_and_writes_the_reports(tmp_path: Path) -> None:
    port = free_port()
    process = check_command(
        "client", "--port", str(port), "--only", "clean,tail-loss", "--json", "run.json",
        "--junit", "run.xml", "--", sys.executable, str(CLIENT), "--port", "{port}",
        "--break", "tail", cwd=tmp_path,
    )  # fmt: skip
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, err
    lines = out.splitlines()
    assert lines[0].startswith("[1/2] clean") and "PASS" in lines[0]
    assert lines[1].startswith("[2/2] tail-loss") and "WRONG" in lines[1]
    assert "1 missing (14)" in lines[1]
    assert lines[-1].startswith("FAILED: 1 of 2 required scenarios passed")
    report = json.loads((tmp_path / "run.json").read_text())
    assert [r["verdict"] for r in report["results"]] == ["pass", "wrong"]
    assert (tmp_path / "run.xml").read_text().startswith("<?xml")


def test_packetcore_fetch_passes_every_scenario_at_both_levels(tmp_path: Path) -> None:
    # The proof that the battery is fair: our own client gets through all of it.
    fetch = [sys.executable, "-m", "packetcore", "fetch", "--port", "{port}", "-o", "{output}",
             "-q"]  # fmt: skip
    run = check_client(fetch, jobs=2, level=Level.HARDENING, cwd=tmp_path)
    failed = {r.label: r.reason for r in run.results if not r.passed}
    assert failed == {} and run.passed, run.summary()


def test_packetcore_fetch_follows_every_scenario_served_live(tmp_path: Path) -> None:
    # --live: each feed is published as time passes, with the same losses and faults
    # (corrupted sequences and lost repairs of the tail included); a follow must pass.
    follow = [sys.executable, "-m", "packetcore", "fetch", "--follow", "--port", "{port}",
              "-o", "{output}", "-q"]  # fmt: skip
    run = check_client(follow, jobs=2, level=Level.HARDENING, cwd=tmp_path, live=True)
    failed = {r.label: r.reason for r in run.results if not r.passed}
    assert failed == {} and run.passed and run.live, run.summary()
    assert all(r.timeline for r in run.results)
    # It subscribed (callType 5): the live feed reached it as a subscription.
    calls = {q["call_type"] for r in run.results for c in r.timeline for q in c["requests"]}
    assert 5 in calls


def test_the_pytest_plugin_fails_a_test_with_a_line_per_failed_scenario(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["packetcore.check.pytest_plugin"]\n')
    command = [sys.executable, str(CLIENT), "--port", "{port}", "--output", "{output}"]
    (tmp_path / "test_mine.py").write_text(
        f"COMMAND = {command!r}\n\n"
        "def test_good(packetcore_check):\n"
        "    run = packetcore_check(COMMAND, only=['clean', 'tail-loss'], jobs=2)\n"
        "    assert run.passed and len(run.results) == 2\n\n"
        "def test_broken(packetcore_check):\n"
        "    packetcore_check(COMMAND + ['--break', 'tail'], only=['tail-loss'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout
    assert "1 failed, 1 passed" in result.stdout
    assert "tail-loss (required): wrong: 13 records for 14 sequences: 1 missing (14)" in (
        result.stdout
    )


def test_the_same_seed_gives_the_same_verdicts_and_reasons() -> None:
    # A client that trusts one stream: its verdicts follow the seeded losses alone.
    names = ["loss", "latency", "split-odd", "tail-loss", "everything"]
    runs = [
        check_client(client("--break", "tail"), only=names, jobs=2, seed=seed, repeat=3)
        for seed in (11, 11, 12)
    ]
    seen = [[(r.label, r.seed, r.verdict, r.reason) for r in run.results] for run in runs]
    assert seen[0] == seen[1]
    assert [s for _, s, _, _ in seen[0]] != [s for _, s, _, _ in seen[2]]
    assert len(seen[0]) == 3 + 3 + 1 + 1 + 3  # the randomized ones drawn three times


@pytest.mark.parametrize("output", ["", ".", "mine", "no-such-dir/output.json"])
def test_an_output_that_is_no_file_the_client_can_write_is_refused(
    tmp_path: Path, output: str
) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "work.txt").write_text("my own work\n")
    with pytest.raises(UserError) as caught:
        check_client(["true"], port=free_port(), output=output, cwd=tmp_path, only=["clean"])
    assert caught.value.exit_code == 2 and "--output" in str(caught.value)
    # Nothing was moved: the directory and what it holds are where they were.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    assert (tmp_path / "mine" / "work.txt").read_text() == "my own work\n"


def test_a_client_that_makes_a_directory_of_its_output_is_wrong_and_the_users_file_survives(
    tmp_path: Path,
) -> None:
    (tmp_path / "output.json").write_text("my own work\n")
    notes: list[str] = []
    run = check_client(
        ["sh", "-c", "mkdir output.json && echo x > output.json/part"], port=free_port(),
        cwd=tmp_path, only=["clean", "tail-loss"], note=notes.append,
    )  # fmt: skip
    assert [(r.verdict, r.reason) for r in run.results] == [
        (Verdict.WRONG, "output.json is a directory, not a file")
    ] * 2
    assert (tmp_path / "output.json").read_text() == "my own work\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output.json"]
    assert notes == [
        "output.json is kept aside as .output.json.packetcore-check.kept while the check "
        "runs, and put back at the end"
    ]


@pytest.mark.parametrize(
    ("script", "reason"),
    [("mkfifo output.json", "output.json is a FIFO, not a regular file"),
     ("ln -s /dev/zero output.json", "output.json is a device, not a regular file")],
)  # fmt: skip
def test_an_output_that_is_no_regular_file_is_wrong_without_being_opened(
    tmp_path: Path, script: str, reason: str
) -> None:
    # Opening a FIFO would wait for a writer for ever; /dev/zero never ends.
    run = check_client(["sh", "-c", script], port=free_port(), cwd=tmp_path, only=["clean"])
    assert [(r.verdict, r.reason) for r in run.results] == [(Verdict.WRONG, reason)]
    assert list(tmp_path.iterdir()) == []


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_check_killed_outright_leaves_the_users_file_for_the_next_to_put_back(
    tmp_path: Path,
) -> None:
    # What SIGKILL leaves: the user's file kept aside, the lock of a pid now gone.
    (tmp_path / ".output.json.packetcore-check.kept").write_text("my own work\n")
    (tmp_path / ".output.json.packetcore-check.lock").write_text(f"{dead_pid()}\n")
    notes: list[str] = []
    port = free_port()
    command = [sys.executable, str(CLIENT), "--port", str(port)]
    run = check_client(command, port=port, cwd=tmp_path, only=["clean"], note=notes.append)
    assert verdicts(run) == {"clean": Verdict.PASS}
    assert notes[0].startswith("put output.json back from .output.json.packetcore-check.kept")
    assert (tmp_path / "output.json").read_text() == "my own work\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output.json"]


def test_a_kept_file_beside_a_new_output_is_left_for_the_user_to_choose(tmp_path: Path) -> None:
    (tmp_path / ".output.json.packetcore-check.kept").write_text("my own work\n")
    (tmp_path / "output.json").write_text("what a client wrote\n")
    with pytest.raises(UserError, match=r"an earlier check of output\.json was killed"):
        check_client(["true"], port=free_port(), cwd=tmp_path, only=["clean"])
    assert (tmp_path / ".output.json.packetcore-check.kept").read_text() == "my own work\n"
    assert (tmp_path / "output.json").read_text() == "what a client wrote\n"
    assert not (tmp_path / ".output.json.packetcore-check.lock").exists()


def test_a_second_check_of_the_same_output_is_refused_while_the_first_runs(
    tmp_path: Path,
) -> None:
    (tmp_path / "output.json").write_text("my own work\n")
    with subprocess.Popen(["sleep", "60"]) as first:
        try:
            (tmp_path / ".output.json.packetcore-check.lock").write_text(f"{first.pid}\n")
            with pytest.raises(
                UserError, match=rf"in use by another packetcore-check \(pid {first.pid}\)"
            ):
                check_client(["true"], port=free_port(), cwd=tmp_path, only=["clean"])
        finally:
            first.kill()
    assert (tmp_path / "output.json").read_text() == "my own work\n"
    assert (tmp_path / ".output.json.packetcore-check.lock").read_text() == f"{first.pid}\n"


def test_a_report_on_stdout_has_it_alone_and_two_reports_on_one_path_are_refused(
    tmp_path: Path,
) -> None:
    port = free_port()
    process = check_command(
        "client", "--port", str(port), "--only", "clean", "--json", "-", "--",
        sys.executable, str(CLIENT), "--port", "{port}", cwd=tmp_path,
    )  # fmt: skip
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert json.loads(out)["results"][0]["verdict"] == "pass"  # stdout is the JSON alone
    assert "[1/1] clean" in err and "PASSED: 1 of 1" in err
    for args in (["--json", "run.out", "--html", "./run.out"], ["--json", "-", "--junit",
                 "/dev/stdout"]):  # fmt: skip
        process = check_command("client", *args, "--", "true", cwd=tmp_path)
        _out, err = process.communicate(timeout=60)
        assert process.returncode == 2 and "both write" in err and err.count("\n") == 1, err
    assert not (tmp_path / "run.out").exists()


def test_a_reason_quoting_the_clients_stderr_holds_no_control_characters(tmp_path: Path) -> None:
    command = ["sh", "-c", r"printf 'bad \033[31mred\033[0m\a\177 over\ttab\n' >&2; exit 3"]
    run = check_client(command, port=free_port(), cwd=tmp_path, only=["clean"])
    assert run.results[0].reason == "exit status 3: bad [31mred[0m over tab"


def test_an_interrupted_summary_says_how_far_the_run_went() -> None:
    run = CheckRun("client", "x", Level.REQUIRED, 0, "", planned=5, interrupted=True)
    assert run.summary() == (
        "INTERRUPTED: 0 of 5 scenarios ran (nothing run) in 0.0 s; 0 of the 0 required "
        "ones that ran passed"
    )
    assert not run.passed


def test_a_client_that_writes_the_feed_without_fetching_it_is_wrong(tmp_path: Path) -> None:
    # A copy of the book from an earlier run is the feed, but not the one served.
    (tmp_path / "book.json").write_text(json.dumps(book().to_records()))
    run = check_client(["cp", "book.json", "{output}"], cwd=tmp_path, only=["clean", "loss"])
    assert {r.verdict for r in run.results} == {Verdict.WRONG}
    assert "holds the feed, but no request reached port" in run.results[0].reason


def test_a_second_ctrl_c_kills_a_client_that_ignores_sigterm(tmp_path: Path) -> None:
    mine = tmp_path / "output.json"
    mine.write_text("my own work\n")
    (tmp_path / "stubborn.sh").write_text(
        "trap '' TERM INT\nwhile :; do sleep 0.1; echo CLOBBER > output.json; done\n"
    )
    process = check_command(
        "client", "--only", "clean", "--time-limit", "60", "--", "sh", "stubborn.sh", "{port}",
        cwd=tmp_path,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not (tmp_path / "output.json").exists() or mine.read_text() != "CLOBBER\n":
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # the check stops the client: SIGTERM, ignored
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)  # another request: the check gives up, SIGKILL
    _out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    time.sleep(0.5)  # a client still running would have written by now
    assert mine.read_text() == "my own work\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output.json", "stubborn.sh"]


def test_an_output_larger_than_any_feed_is_not_read(tmp_path: Path) -> None:
    script = "head -c 20000000 /dev/zero > output.json"
    run = check_client(["sh", "-c", script], port=free_port(), cwd=tmp_path, only=["clean"])
    assert run.results[0].verdict is Verdict.WRONG
    assert run.results[0].reason == (
        "output.json is 20,000,000 bytes, more than any format of a 14-packet feed takes "
        "(16,777,216): not read"
    )


def test_a_byte_order_mark_is_no_fault(tmp_path: Path) -> None:
    port = free_port()
    command = ["sh", "-c", f"{sys.executable} {CLIENT} --port {port} --output book.json && "
               "printf '\\357\\273\\277' | cat - book.json > output.json"]  # fmt: skip
    run = check_client(command, port=port, cwd=tmp_path, only=["clean"])
    assert verdicts(run) == {"clean": Verdict.PASS}, run.results[0].reason


def test_a_fixed_output_is_held_for_the_whole_run_when_the_port_varies(tmp_path: Path) -> None:
    (tmp_path / "output.json").write_text("my own work\n")
    notes: list[str] = []
    locks: list[bool] = []
    command = [sys.executable, str(CLIENT), "--port", "{port}"]
    lock = tmp_path / ".output.json.packetcore-check.lock"
    run = check_client(
        command, cwd=tmp_path, only=["clean", "tail-loss", "loss"], note=notes.append,
        on_start=lambda *_: locks.append(lock.exists()),
    )  # fmt: skip
    assert run.passed and locks == [True, True, True]
    assert len(notes) == 1  # kept aside once, not once a scenario
    assert (tmp_path / "output.json").read_text() == "my own work\n"


@pytest.mark.parametrize(
    ("args", "words"),
    [(["--output", "/"], "--output '/': names a directory"),
     (["--output", "x.json/"], "--output 'x.json/': names a directory"),
     (["--output", "x.json/."], "--output 'x.json/.': names a directory"),
     (["--jobs", "65"], "--jobs: 65 is not a count in 1..64"),
     (["--host", "256.1.1.1"], "--host 256.1.1.1:"),
     (["--json", "output.json"], "--json output.json is where the client writes (--output)")],
)  # fmt: skip
def test_more_bad_options_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], words: str
) -> None:
    (tmp_path / "output.json").write_text("my own work\n")
    process = check_command("client", "--port", str(free_port()), *args, "--", "true", cwd=tmp_path)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 2, err
    assert words in err, err
    assert err.count("\n") == 1 or err.startswith("usage"), err
    assert (tmp_path / "output.json").read_text() == "my own work\n"


def check_in_shell(suffix: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``packetcore-check ARGS`` in bash, with ``suffix`` (a pipe, a redirection)."""
    command = [sys.executable, "-m", "packetcore", "check", *args]
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", shlex.join(command) + suffix], cwd=cwd,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_reader_that_leaves_ends_the_run_and_the_users_file_is_back(tmp_path: Path) -> None:
    (tmp_path / "output.json").write_text("my own work\n")
    process = check_in_shell(
        " | head -c 1", "client", "--only", "clean,tail-loss,loss", "--", sys.executable,
        str(CLIENT), "--port", "{port}", cwd=tmp_path,
    )  # fmt: skip
    assert process.returncode == 1 and "Traceback" not in process.stderr, process.stderr
    assert (tmp_path / "output.json").read_text() == "my own work\n"


def test_a_closed_stdout_puts_the_table_on_stderr(tmp_path: Path) -> None:
    process = check_in_shell(
        " >&-", "client", "--only", "clean", "--", sys.executable, str(CLIENT), "--port",
        "{port}", "--output", "{output}", cwd=tmp_path,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr
    assert "Traceback" not in process.stderr


def test_the_server_scenarios_are_listed_without_a_server() -> None:
    process = subprocess.run(
        [sys.executable, "-m", "packetcore", "check", "server", "--list"], capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert process.returncode == 0 and process.stdout.startswith("stream-all"), process.stderr
    process = subprocess.run(
        [sys.executable, "-m", "packetcore", "check", "server"], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert process.returncode == 2 and "HOST:PORT" in process.stderr
