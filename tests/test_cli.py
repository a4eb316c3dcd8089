"""The command line: ``python -m packetcore``, its commands' names, signals, ``make demo``."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from packetcore.__main__ import main as packetcore_main
from packetcore.cli import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, add_verbosity, run
from packetcore.cli.serve import main as serve_main
from packetcore.errors import UserError
from packetcore.protocol import stream_all_request
from serverutil import recv_all, reference_bytes

import packetcore

SRC = str(Path(packetcore.__file__).resolve().parents[1])
MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"
TIMEOUT = 30.0
LISTENING = re.compile(r"^packetcore-serve: listening on port (\d+) \(127\.0\.0\.1: 127\.0\.0\.1\)")


def python(*args: str) -> subprocess.Popen[str]:
    """Start ``python *args`` with this package importable; stdout and stderr piped."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Wait for ``process``; return its status, stdout and stderr."""
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stdout, stderr


@pytest.fixture
def serve() -> Iterator[list[subprocess.Popen[str]]]:
    """Start ``python -m packetcore serve`` processes; kill any left running."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def start_serve(
    started: list[subprocess.Popen[str]], *args: str
) -> tuple[subprocess.Popen[str], int]:
    """Start a quiet server on a free 127.0.0.1 port; return it and the port it prints."""
    process = python("-m", "packetcore", "serve", "--host", "127.0.0.1", "--port", "0", *args)
    started.append(process)
    assert process.stderr is not None
    line = process.stderr.readline()
    found = LISTENING.match(line)
    assert found, f"expected the listening line first, got {line!r}"
    return process, int(found.group(1))


# -- python -m packetcore ---------------------------------------------------------------------


def test_no_command_is_a_usage_error_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert packetcore_main([]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: python -m packetcore {serve,fetch,proxy,check,info,convert,demo}")


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_is_usage_on_stdout(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert packetcore_main([flag]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: python -m packetcore {serve,fetch,proxy,check,info,convert,demo}")
    assert err == ""


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert packetcore_main(["fletch"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("python -m packetcore: error: unknown command 'fletch'")


@pytest.mark.parametrize("command", ["serve", "fetch", "demo"])
def test_command_usage_names_it_as_typed(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        packetcore_main([command, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m packetcore {command} [-h]")
    with pytest.raises(SystemExit) as exited:
        packetcore_main([command, "--no-such-option"])
    assert exited.value.code == 2
    assert f"python -m packetcore {command}: error: unrecognized" in capsys.readouterr().err


def test_console_script_keeps_its_own_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        serve_main(["--help"])
    assert capsys.readouterr().out.startswith("usage: packetcore-serve [-h]")


@pytest.mark.parametrize(
    ("module", "prog"),
    [
        ("packetcore.cli.serve", "packetcore-serve"),
        ("packetcore.cli.demo", "python -m packetcore demo"),
        ("packetcore.cli.fetch", "packetcore-fetch"),
    ],
)
def test_command_modules_run_as_scripts(module: str, prog: str) -> None:
    status, stdout, _ = finish(python("-m", module, "--help"))
    assert status == 0
    assert stdout.startswith(f"usage: {prog} [-h]")
    status, _, stderr = finish(python("-m", module, "--no-such-option"))
    assert status == 2
    assert "unrecognized arguments" in stderr


@pytest.mark.parametrize("count", ["0", "-5", "2147483648"])
def test_synthetic_feed_size_message_matches_the_check(
    count: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A usage error (exit 2), as every other bad option: refused before anything loads.
    with pytest.raises(SystemExit) as exited:
        serve_main(["--feed", f"synthetic:{count}", "--port", "0", "-q"])
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == (
        f"packetcore-serve: error: argument --feed: feed 'synthetic:{count}': a synthetic "
        f"feed holds 1..2147483647 packets (at least 1 packet, at most one per positive "
        f"int32 sequence)"
    )


def test_a_synthetic_feed_that_is_no_count_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        serve_main(["--feed", "synthetic:abc", "--port", "0", "-q"])
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == (
        "packetcore-serve: error: argument --feed: feed 'synthetic:abc': 'abc' is not a "
        "packet count"
    )


# -- run(): signals ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probe")
    add_verbosity(parser)
    return parser


def test_run_turns_sigterm_into_one_line_and_143(capsys: pytest.CaptureFixture[str]) -> None:
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("this test process handles SIGTERM itself")
    cleaned: list[str] = []

    def body(args: argparse.Namespace) -> int:
        # Without a handler SIGTERM would end the test run itself.
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, "no SIGTERM handler"
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            threading.Event().wait(TIMEOUT)  # the handler's exception ends the wait
            return 0
        except KeyboardInterrupt as exc:
            cleaned.append(type(exc).__name__)  # Ctrl-C cleanups run for SIGTERM too
            raise

    assert run("probe", _parser(), body, []) == EXIT_TERMINATED == 143
    assert cleaned == ["Terminated"]
    assert capsys.readouterr().err == "probe: terminated\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back


def test_run_turns_ctrl_c_into_one_line_and_130(capsys: pytest.CaptureFixture[str]) -> None:
    def body(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    assert run("probe", _parser(), body, []) == EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == "probe: interrupted\n"


def test_run_leaves_a_sigterm_handler_it_did_not_install() -> None:
    seen: list[int] = []

    def handler(signum: int, frame: object) -> None:
        seen.append(signum)

    def body(args: argparse.Namespace) -> int:
        assert signal.getsignal(signal.SIGTERM) is handler
        os.kill(os.getpid(), signal.SIGTERM)
        return 0

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        assert run("probe", _parser(), body, []) == 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIGTERM]


def test_terminated_is_a_keyboard_interrupt() -> None:
    assert issubclass(Terminated, KeyboardInterrupt)


# -- packetcore-serve: the port, signals ------------------------------------------------------


def test_serve_quiet_prints_the_port_and_serves(serve: list[subprocess.Popen[str]]) -> None:
    process, port = start_serve(serve, "-q", "--drop", "0")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(stream_all_request())
        assert recv_all(sock) == reference_bytes()
    process.send_signal(signal.SIGTERM)
    status, _, stderr = finish(process)
    assert status == 143
    # -q: nothing but the stop line after the listening line.
    assert stderr.splitlines() == [
        "packetcore-serve: stopped by SIGTERM: 1 connections (0 refused), 1 streams, "
        "14 packets sent, 0 resent, 0 dropped, 0 bad requests"
    ]


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_serve_stops_at_once_on_a_signal_mid_stream(
    serve: list[subprocess.Popen[str]], signum: signal.Signals, status: int
) -> None:
    # A client that asked for a large stream and reads none of it holds the server in
    # drain(); with no idle timeout only the signal can end that.
    process, port = start_serve(
        serve, "-q", "--feed", "synthetic:1000000", "--seed", "1", "--idle-timeout", "0"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 14)
        sock.sendall(stream_all_request())
        assert sock.recv(17)  # the stream has begun
        began = time.monotonic()
        process.send_signal(signum)
        try:
            process.wait(TIMEOUT)  # a hang would last forever: --idle-timeout 0
        except subprocess.TimeoutExpired:
            pytest.fail(f"packetcore-serve still runs {TIMEOUT:g} s after {signum.name}")
        took = time.monotonic() - began
    code, _, stderr = finish(process)
    assert code == status
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"packetcore-serve: stopped by {signum.name}: 1 connections")
    print(f"stopped {took:.3f} s after {signum.name}")


# -- make demo --------------------------------------------------------------------------------


def test_make_demo_prints_only_the_summary_line(tmp_path: Path) -> None:
    make = shutil.which("make")
    if make is None or not MAKEFILE.is_file():
        pytest.skip("needs make and the source tree's Makefile")
    # A stand-in venv whose python is this one and whose setup counts as done: the
    # recipe runs as written, without installing anything.
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    shim = venv / "bin" / "python"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    (venv / ".deps").touch()  # newer than pyproject.toml: no venv is made
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    env["PYTHONPATH"] = SRC

    def make_demo(*demo_args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [make, "demo", f"VENV={venv}", "PYTHON=false", "PIP=true",
             "DEMO_ARGS=" + " ".join(demo_args)],
            cwd=MAKEFILE.parent, capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip

    output = tmp_path / "output.json"
    done = make_demo("--seed", "3", "-o", str(output))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert re.fullmatch(
        rf"14 packets .* -> {re.escape(str(output))} \[extended protocol\]", lines[0]
    )
    assert output.is_file()

    failed = make_demo("-o", str(tmp_path / "missing" / "output.json"))
    assert failed.returncode != 0
    errors = [line for line in failed.stderr.splitlines() if not line.startswith("make")]
    assert errors == [
        f"packetcore demo: error: cannot write the output: output directory "
        f"'{tmp_path / 'missing'}' does not exist"
    ]


# -- one definition of each thing ---------------------------------------------------------------


def test_errors_live_in_errors_and_keep_their_old_imports() -> None:
    import packetcore.cli
    import packetcore.errors
    import packetcore.io.output

    assert packetcore.io.output.OutputError is packetcore.errors.OutputError
    assert packetcore.cli.UserError is packetcore.errors.UserError
    assert packetcore.errors.UserError("x").exit_code == packetcore.cli.EXIT_FAILURE == 1
    assert issubclass(packetcore.errors.OutputError, packetcore.errors.PacketcoreError)


def test_exit_statuses_are_named_once() -> None:
    # cli.exits names them; the modules that export them hand on the same names.
    import packetcore.cli
    import packetcore.cli.fetch
    from packetcore.cli import exits, signals

    assert (exits.EXIT_FAILURE, exits.EXIT_USAGE, exits.EXIT_INCOMPLETE, exits.EXIT_STRICT) == (
        1, 2, 3, 4,
    )  # fmt: skip
    assert packetcore.cli.EXIT_FAILURE is exits.EXIT_FAILURE
    assert packetcore.cli.EXIT_USAGE is exits.EXIT_USAGE
    assert packetcore.cli.fetch.EXIT_INCOMPLETE is exits.EXIT_INCOMPLETE
    assert packetcore.cli.fetch.EXIT_STRICT is exits.EXIT_STRICT
    assert exits.EXIT_INTERRUPTED == exits.signalled(signal.SIGINT) == 130
    assert exits.EXIT_TERMINATED == exits.signalled(signal.SIGTERM) == 143
    assert signals.Terminated().status == EXIT_TERMINATED
    assert signals.Terminated().what == "terminated" and signals.Terminated().name == "SIGTERM"
    ctrl_c = signals.stopped_by(KeyboardInterrupt())
    assert (ctrl_c.status, ctrl_c.what, ctrl_c.name) == (EXIT_INTERRUPTED, "interrupted", "SIGINT")


def test_the_signal_rule_loads_light() -> None:
    # packetcore.__main__ loads cli.signals before it holds the signals and loads the
    # command: nothing heavy may come with it (typing alone took longer than the rest).
    probe = "import sys, packetcore.cli.signals; print(' '.join(sorted(m for m in sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=TIMEOUT
    ).stdout.split()
    for module in ("argparse", "asyncio", "logging", "numpy", "socket", "typing"):
        assert module not in loaded


def _option_help(parser: argparse.ArgumentParser) -> dict[str, tuple[object, str | None]]:
    return {
        action.option_strings[-1]: (action.default, action.help)
        for action in parser._actions
        if action.option_strings and action.option_strings[-1] in ("--feed", "--drop", "--seed")
    }


def test_demo_declares_feed_drop_and_seed_as_serve_will() -> None:
    from packetcore.cli.demo import build_parser
    from packetcore.cli.options import add_feed_options

    shared = argparse.ArgumentParser()
    add_feed_options(shared)
    declared = _option_help(shared)
    assert set(declared) == {"--feed", "--drop", "--seed"}
    assert declared["--drop"][0] == 0.25  # the reference's loss, Server's default
    assert declared["--seed"][0] is None
    assert declared["--feed"][0] == "book"
    assert _option_help(build_parser()) == declared


@pytest.mark.parametrize(
    ("args", "message"), [(["--drop", "1.5"], "not a probability"), (["--seed", "-1"], "negative")]
)
def test_demo_shared_options_refuse_bad_values(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from packetcore.cli.demo import build_parser

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(args)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


# -- options refused before anything binds ----------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port in use on 127.0.0.1: a command that binds it fails (1), not the usage check (2)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def one_error_line(capsys: pytest.CaptureFixture[str], program: str) -> str:
    """Return the one line a refused command printed, checking it is one line and an error."""
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{program}: error: "), lines
    return lines[0]


@pytest.mark.parametrize("metrics_host", [[], ["--metrics-host", "127.0.0.1"]])
def test_serve_port_and_metrics_port_must_differ(
    metrics_host: list[str], taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    # It said "metrics on port P", then failed to listen on P.
    port = str(taken_port)
    args = ["--host", "127.0.0.1", "--port", port, "--metrics-port", port, *metrics_host]
    assert serve_main(args) == 2
    assert "--port and --metrics-port must differ" in one_error_line(capsys, "packetcore-serve")


def test_proxy_listen_and_metrics_port_must_differ(
    taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    from packetcore.cli.proxy import main as proxy_main

    port = str(taken_port)
    args = ["--host", "127.0.0.1", "--listen", port, "--upstream", "127.0.0.1:1",
            "--metrics-port", port, "--metrics-host", "127.0.0.1"]  # fmt: skip
    assert proxy_main(args) == 2
    line = one_error_line(capsys, "packetcore-proxy")
    assert "--listen and --metrics-port must differ" in line


def test_metrics_port_clashes_only_where_the_hosts_overlap() -> None:
    from packetcore.cli.options import check_metrics

    def check(host: str, metrics_host: str | None, port: int = 5000) -> bool:
        args = argparse.Namespace(metrics_port=5000, metrics_host=metrics_host)
        try:
            check_metrics(args, port, host, "--port")
        except UserError:
            return False
        return True

    assert not check("127.0.0.1", "127.0.0.1")
    assert not check("0.0.0.0", "127.0.0.1")  # the wildcard takes every IPv4 address
    assert not check("::", "127.0.0.1")  # dual-stack: every address
    assert not check("localhost", None)  # both default to localhost
    assert check("::1", "127.0.0.1")
    assert check("0.0.0.0", "::1")
    assert check("127.0.0.1", "127.0.0.1", port=5001)
    assert check("127.0.0.1", "127.0.0.1", port=0)  # 0: a free port, never the same


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-lag", "3"], "--max-lag needs --live"),
        (["--max-buffer", "1000000"], "--max-buffer needs --live"),
        (["--metrics-host", "127.0.0.1"], "--metrics-host needs --metrics-port"),
    ],
)
def test_serve_options_that_need_another_are_usage_errors(
    args: list[str], message: str, taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    # --max-lag without --live was accepted silently, as --until's twin was not.
    assert serve_main(["--host", "127.0.0.1", "--port", str(taken_port), *args]) == 2
    assert message in one_error_line(capsys, "packetcore-serve")


def test_proxy_metrics_host_needs_metrics_port(
    taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    from packetcore.cli.proxy import main as proxy_main

    args = ["--host", "127.0.0.1", "--listen", str(taken_port), "--upstream", "127.0.0.1:1",
            "--metrics-host", "127.0.0.1"]  # fmt: skip
    assert proxy_main(args) == 2
    assert "--metrics-host needs --metrics-port" in one_error_line(capsys, "packetcore-proxy")


def test_serve_until_above_the_highest_sequence_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from packetcore.cli.serve import build_parser

    parse = build_parser().parse_args
    assert parse(["--live", "1", "--until", str(2**31 - 1)]).until == 2**31 - 1
    # It was clamped, silently, to the highest sequence a packet can carry.
    with pytest.raises(SystemExit) as exited:
        parse(["--live", "1", "--until", str(2**31)])
    assert exited.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "above 2147483647, the highest sequence" in errors[0], errors


def test_serve_max_lag_defaults_to_the_servers() -> None:
    from packetcore.cli.serve import build_parser

    assert build_parser().parse_args(["--live", "1"]).max_lag is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # Every packet of the endless feed published at once; years between packets.
        (["--live", "1e30"], "not a rate in 0.001..1e+09"),
        (["--live", "1e-9"], "not a rate in 0.001..1e+09"),
        (["--live", "-1"], "not a rate of 0 or more"),
        (["--live", "inf"], "not a finite number"),
    ],
)
def test_serve_live_rates_out_of_range_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from packetcore.cli.serve import build_parser

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(args)
    assert exited.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], errors


def test_serve_live_bounds_are_accepted() -> None:
    from packetcore.cli.serve import MAX_RATE, MIN_RATE, build_parser

    parse = build_parser().parse_args
    assert parse(["--live", str(MIN_RATE)]).live == MIN_RATE == 0.001
    assert parse(["--live", str(MAX_RATE)]).live == MAX_RATE == 1e9
    assert parse(["--live", "0"]).live == 0.0  # a finished feed


# -- packetcore-fetch: one rule for stdout and for --format -----------------------------------


def _fetch_script(*args: str, stdout: int = subprocess.PIPE) -> subprocess.Popen[bytes]:
    """Start the installed ``packetcore-fetch`` (its module if not installed)."""
    script = Path(sys.executable).parent / "packetcore-fetch"
    line = [str(script)] if script.exists() else [sys.executable, "-m", "packetcore", "fetch"]
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [*line, *args], stdout=stdout, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("follow", [False, True])
def test_a_reader_that_leaves_stdout_is_a_normal_end(follow: bool) -> None:
    # `fetch -o - | head` was exit 1 ("broken pipe") while `fetch --follow -o - | head`
    # was 0: one rule, as for `yes | head`: the reader had what it wanted.
    from packetcore.io.feeds import synthetic
    from packetcore.server.server import Server

    with Server(synthetic(300_000, seed=5), host="127.0.0.1", port=0, drop=0.0,
                **({"live": 200_000.0} if follow else {})) as server:  # fmt: skip
        process = _fetch_script(
            "--port", str(server.port), "-o", "-", "--format", "ndjson",
            *(["--follow"] * follow),
        )  # fmt: skip
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline().startswith(b"{")  # `| head -1`
        process.stdout.close()
        err = process.stderr.read().decode()
        status = process.wait(TIMEOUT)
    assert status == 0, err
    assert "Traceback" not in err and "error" not in err, err
    assert err.strip().count("\n") == 0, err


@pytest.mark.engine_neutral
@pytest.mark.parametrize(
    ("output", "form"),
    [("x.json", "csv"), ("x.csv", "parquet"), ("x.jsonl", "json"), ("x.bin.partial", "csv")],
)
def test_a_format_that_contradicts_the_extension_is_refused(
    tmp_path: Path, output: str, form: str
) -> None:
    # `-o x.json --format csv` used to write CSV into x.json without a word.
    process = _fetch_script("--port", str(_free_port()), "-o", str(tmp_path / output),
                            "--format", form, "--retries", "0")  # fmt: skip
    _, err = process.communicate(timeout=TIMEOUT)
    text = err.decode()
    assert process.returncode == 2, text
    assert text.count("\n") == 1 and f"--format {form} contradicts" in text, text
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(("output", "form"), [("x.csv", "csv"), ("x.dat", "csv"), ("-", "bin")])
def test_a_format_the_extension_agrees_with_or_does_not_name_is_taken(
    tmp_path: Path, output: str, form: str
) -> None:
    target = output if output == "-" else str(tmp_path / output)
    process = _fetch_script("--port", str(_free_port()), "-o", target, "--format", form,
                            "--retries", "0")  # fmt: skip
    _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 1, err  # no server: a runtime failure, not a bad option
    assert b"cannot connect" in err or b"refused" in err, err


@pytest.mark.parametrize("form", ["csv", "parquet", "json"])
def test_nothing_reaches_stdout_before_the_feed_is_reached(form: str) -> None:
    # `--format parquet -o -` wrote its header before connecting (csv too): a fetch
    # that cannot connect must leave stdout empty.
    if form == "parquet":
        pytest.importorskip("pyarrow")
    process = _fetch_script("--port", str(_free_port()), "-o", "-", "--format", form,
                            "--retries", "0")  # fmt: skip
    out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 1, err
    assert out == b""


def test_a_fetch_started_with_stdout_closed_writes_into_no_socket() -> None:
    # `packetcore-fetch -o - >&-`: descriptor 1 was free, and the first socket the fetch
    # opened took it: the records went into a connection.  Now the command keeps 0-2
    # taken (by /dev/null) and says that stdout is closed.
    from packetcore.server.server import Server

    script = Path(sys.executable).parent / "packetcore-fetch"
    with Server(host="127.0.0.1", port=0, drop=0.0) as server:
        result = subprocess.run(
            ["sh", "-c", f'exec "{script}" --port {server.port} -o - >&-'],
            capture_output=False, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            timeout=TIMEOUT, check=False,
        )  # fmt: skip
        requests = server.stats.connections
    assert result.returncode == 1, result.stderr
    assert result.stderr.decode().strip().endswith("cannot write to stdout: it is closed")
    assert result.stderr.count(b"\n") == 1
    assert requests == 0  # refused before it connected
