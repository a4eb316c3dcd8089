"""Atomic output: output.json is the old file or the new one, never half of either."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest
from packetcore.io.feeds import book
from packetcore.io.output import (
    AtomicFile,
    check_writable,
    partial_path,
)

from packetcore import to_json, write


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_write_writes_the_output_document(tmp_path: Path) -> None:
    target = tmp_path / "output.json"
    write(target, book())
    assert target.read_bytes() == to_json(book())
    assert json.loads(target.read_bytes()) == book().to_records()
    assert _listing(tmp_path) == ["output.json"]


def test_atomic_file_replaces_and_keeps_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "output.json"
    target.write_bytes(b"old")
    target.chmod(0o640)
    with AtomicFile(target) as file:
        file.stream.write(b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_new_file_gets_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        with AtomicFile(tmp_path / "a.json") as file:
            file.stream.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "output.json"
    target.write_bytes(b"old")

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space"), AtomicFile(target) as file:
        file.stream.write(b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["output.json"]


def test_an_interrupted_write_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "output.json"
    target.write_bytes(b"old")

    def interrupt(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt), AtomicFile(target) as file:
        file.stream.write(b"new")
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["output.json"]


def test_stdout(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    write("-", book())
    assert capsysbinary.readouterr().out == to_json(book())


def test_partial_path() -> None:
    assert partial_path("out/output.json") == Path("out/output.json.partial")


def test_check_writable(tmp_path: Path) -> None:
    check_writable(tmp_path / "output.json")
    check_writable("-")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_writable(tmp_path / "nowhere" / "output.json")
    with pytest.raises(IsADirectoryError):
        check_writable(tmp_path)


def test_check_writable_refuses_a_file_as_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(OSError):
        check_writable(blocker / "output.json")


def test_a_symlink_is_followed_and_kept(tmp_path: Path) -> None:
    target = tmp_path / "target.json"
    target.write_bytes(b"old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write(link, book())
    assert link.is_symlink()
    assert target.read_bytes() == to_json(book())


def test_a_fifo_is_written_into_not_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    write(fifo, book())
    reader.join(timeout=10)
    assert received == [to_json(book())]
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_a_format_that_cannot_start_leaves_nothing_behind(tmp_path: Path) -> None:
    # open_writer refuses the format: the temporary file goes, nothing is left.
    from packetcore.io.sink import Output

    with pytest.raises(ValueError):
        Output(str(tmp_path / "out.json"), "no-such-format")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["empty", "slash", "partial-is-a-directory"])
def test_outputs_that_would_fail_at_the_end_fail_at_once(case: str, tmp_path: Path) -> None:
    from packetcore.errors import OutputError
    from packetcore.io.sink import Output

    if case == "empty":
        path = ""
    elif case == "slash":
        path = str(tmp_path / "new.json") + os.sep  # a directory's name, not a file's
    else:
        (tmp_path / "out.json.partial").mkdir()
        path = str(tmp_path / "out.json")
    with pytest.raises(OutputError):
        Output(path, "json")
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        ["out.json.partial"] if case == "partial-is-a-directory" else []
    )


def test_the_longest_file_name_can_be_written(tmp_path: Path) -> None:
    target = tmp_path / ("x" * 250 + ".json")  # 255 bytes: the temporary must fit too
    with AtomicFile(target) as file:
        file.stream.write(b"[]\n")
    assert target.read_bytes() == b"[]\n"
