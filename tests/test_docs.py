"""Every command example in README.md and docs/*.md runs as written.

The convention is docs/development.md's ("Examples that run"): ``sh`` blocks are run
command by command with bash, ``python`` blocks as scripts, in a temporary directory
shared by the blocks of one page, with the venv's ``bin`` first on the PATH; a command
ending in ``&`` is a background service, awaited until it listens and stopped with
SIGINT after its block; an HTML comment before a block (``<!-- docs-test: ... -->``)
starts a server for it (``server ARGS``) or a NATS JetStream broker (``nats PORT``, its
store shared by the page's blocks), writes it as a file, checks it as the output of the block
before, or skips it for a stated reason.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from natsutil import NatsNode

# The manual's examples run once, on the compiled engine: the twin's pass tests the
# engine's paths, not the prose again (about 35 s saved there).
pytestmark = pytest.mark.engine_neutral

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent

# The blocks that cannot run here, by page; each says why in its comment. A new skip
# must be added here too, so none is added silently.
SKIPS = {"README.md": 2, "docs/check.md": 2, "docs/development.md": 1, "docs/nats.md": 2}

RUN = {"sh", "python"}
INERT = {"text", "toml"}
LIMIT = 60.0  # seconds a command may take: a bound that only catches hangs
LISTENING = re.compile(r"listening on")
DIRECTIVE = re.compile(r"^<!-- docs-test: (\w+)(?: (.*?))? -->$")
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass
class Block:
    page: str
    line: int
    lang: str
    text: str
    kind: str = ""  # the directive before it: server, file, skip, or none
    arg: str = ""

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Return the fenced blocks of one page, each with the directive right before it."""
    page = str(path.relative_to(ROOT))
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    directive: tuple[str, str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        if fence:
            start = i
            body = []
            i += 1
            while i < len(lines) and lines[i] != "```":
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"{page}:{start + 1}: a block that never closes"
            kind, arg = directive or ("", "")
            found.append(Block(page, start + 1, fence.group(1), "\n".join(body) + "\n", kind, arg))
            directive = None
        elif line.startswith("<!-- docs-test:"):
            match = DIRECTIVE.match(line)
            assert match, f"{page}:{i + 1}: a docs-test comment that is not one line"
            directive = (match.group(1), match.group(2) or "")
        elif line.strip():
            assert directive is None, f"{page}:{i + 1}: a docs-test comment not before a block"
        i += 1
    assert directive is None, f"{page}: a docs-test comment at the end"
    return found


def commands(text: str) -> list[str]:
    """Return the commands of an ``sh`` block: continuations joined, comments dropped."""
    joined = text.replace("\\\n", " ")
    return [
        line.strip()
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


class Service:
    """A command that runs until stopped: started, awaited until it listens."""

    def __init__(self, command: str, cwd: Path, where: Block) -> None:
        self.command = command
        self.where = where
        self.output: list[str] = []
        self.listening = threading.Event()
        self.process = subprocess.Popen(
            ["bash", "-c", "exec " + command],
            cwd=cwd,
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        started = self.listening.wait(LIMIT)
        if not started or self.process.poll() is not None:
            self.kill()
            pytest.fail(f"{where}: `{command}` never listened:\n{self.text()}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if LISTENING.search(line):
                self.listening.set()
        self.listening.set()  # ended: wake the waiter, which then sees the exit

    def text(self) -> str:
        return "".join(self.output[-40:])

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGINT, as a user's Ctrl-C: the service must end with 130 and no traceback."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            status = self.process.wait(LIMIT)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.where}: `{self.command}` did not stop on SIGINT:\n{self.text()}")
        self.reader.join(LIMIT)
        output = self.text()
        assert status == 130, f"{self.where}: `{self.command}` exited {status}:\n{output}"
        assert "Traceback" not in output, f"{self.where}: `{self.command}`:\n{output}"


def run(argv: list[str], cwd: Path, where: Block, shown: str) -> str:
    """Run one foreground command; it must exit 0 within LIMIT seconds. Return its stdout."""
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        env=environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{where}: `{shown}` ran past {LIMIT:g} s:\n{(stdout + stderr)[-4000:]}")
    output = stdout + stderr
    assert process.returncode == 0, (
        f"{where}: `{shown}` exited {process.returncode}:\n{output[-4000:]}"
    )
    assert "Traceback" not in output, f"{where}: `{shown}`:\n{output[-4000:]}"
    return stdout


def run_block(block: Block, cwd: Path) -> str:
    """Run one block; return the stdout of its last command."""
    services: list[Service] = []
    nats: list[NatsNode] = []
    stdout = ""
    try:
        if block.kind == "server":
            assert "--port" in block.arg, f"{block}: a docs-test server names its --port"
            services.append(Service("packetcore-serve " + block.arg, cwd, block))
        if block.kind == "nats":  # a JetStream broker, its store shared by the page's blocks
            broker = NatsNode(cwd / "nats-store", int(block.arg)).start()
            nats.append(broker)
        if block.lang == "python":
            script = cwd / f"block_{block.line}.py"
            script.write_text(block.text, encoding="utf-8")
            return run([sys.executable, script.name], cwd, block, f"python block {block}")
        for command in commands(block.text):
            words = shlex.split(command, comments=True)
            if words and words[-1] == "&":
                services.append(Service(shlex.join(words[:-1]), cwd, block))
            else:
                stdout = run(["bash", "-c", command], cwd, block, command)
        return stdout
    finally:
        errors = []
        for service in reversed(services):
            try:
                service.stop()
            except BaseException as error:  # stop every one, then report
                errors.append(error)
        for broker in nats:
            broker.stop()
        if errors:
            raise errors[0]


@pytest.mark.parametrize("path", PAGES, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_example_of_the_page_runs(path: Path, tmp_path: Path) -> None:
    stdout = ""
    for block in blocks(path):
        if block.kind == "skip":
            continue
        if block.kind == "file":
            (tmp_path / block.arg).write_text(block.text, encoding="utf-8")
        elif block.kind == "output":
            assert stdout == block.text, f"{block}: the command before printed:\n{stdout}"
        elif block.lang in RUN:
            stdout = run_block(block, tmp_path)


def test_skips_stay_as_listed() -> None:
    skips = {}
    for path in PAGES:
        for block in blocks(path):
            assert block.kind in ("", "server", "nats", "file", "output", "skip"), (
                f"{block}: {block.kind}?"
            )
            if block.kind == "skip":
                assert block.arg, f"{block}: a skip says why"
                skips[block.page] = skips.get(block.page, 0) + 1
    assert skips == SKIPS


def test_every_block_is_tagged_and_commands_are_in_runnable_blocks() -> None:
    for path in PAGES:
        for block in blocks(path):
            assert block.lang in RUN | INERT, f"{block}: a block tagged {block.lang!r}"
            if block.lang in INERT:
                for line in block.text.splitlines():
                    assert not re.match(r"\s*(\$ |make \w|pip \w|packetcore(-\w+)? [-\w])", line), (
                        f"{block}: a command in a {block.lang} block: {line}"
                    )


def test_readme_is_a_front_page_whose_links_resolve() -> None:
    readme = ROOT / "README.md"
    assert len(readme.read_bytes()) <= 8192
    text = readme.read_text(encoding="utf-8")
    first = text[: text.index("## ")]  # the first screen: the two set-up commands
    assert "make demo" in first and "make test" in first
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README.md links to {target}, which is missing"


def test_the_files_and_benchmarks_the_docs_name_exist() -> None:
    # A figure names the benchmark that prints it: that benchmark must still exist.
    defined = set()
    for source in [*ROOT.glob("benchmarks/*.py"), *ROOT.glob("tests/*.py")]:
        defined |= set(re.findall(r"^(?:async )?def (test_\w+)", source.read_text(), re.M))
    named = 0
    for path in PAGES:
        text = path.read_text(encoding="utf-8")
        for where, name in re.findall(
            r"`((?:[\w/]+/)?test_\w+\.py|(?:src|python)/[\w/.]+)?(?:::(\w*))?`", text
        ):
            if where.endswith("..."):
                continue  # a kind of path, not one
            if where and "/" not in where:
                where = "benchmarks/" + where  # performance.md's tables name them short
            if where:
                assert (ROOT / where).exists(), f"{path.name} names {where}, which is missing"
                named += 1
            if name:
                assert name in defined, f"{path.name} names {name}, which no test defines"
        for name in re.findall(r"`(test_\w+)`", text):
            assert name in defined, f"{path.name} names {name}, which no test defines"
    assert named > 20  # the patterns still find the names


def test_the_python_names_the_docs_give_resolve() -> None:
    # `packetcore.server.server.Server` and the like: a module moved leaves no stale name behind.
    names = set()
    for path in PAGES:
        names |= set(re.findall(r"`(packetcore(?:\.\w+)+)", path.read_text(encoding="utf-8")))
    assert len(names) > 3  # the pattern still finds them
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                found: object = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attribute in parts[cut:]:
                assert hasattr(found, attribute), f"the docs name {name}, which does not resolve"
                found = getattr(found, attribute)
            break
