"""Keep the user's output safe while a check runs a client that writes to the same path.

A check of a client that writes a fixed path (``output.json``) must let each scenario
start with no output there, and must give the user's own file back.  :class:`Custody`
does both for one path:

* one check at a time: a lock file beside the output (``.NAME.packetcore-check.lock``,
  created exclusively, holding the check's pid) refuses a second check of the same path
  while the first runs; a lock whose process is gone is taken over;
* the user's file (a regular file or a symlink: a directory there is refused, never
  moved) is renamed to ``.NAME.packetcore-check.kept`` beside it, and put back when the
  custody ends, whatever ended it;
* a check killed outright (SIGKILL, a power cut) leaves both files: the next check of the
  path puts the kept file back first (and says so) when nothing took its place, and
  refuses, naming both, when something did.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from ..errors import UserError

__all__ = ["Custody", "remove"]

Note = Callable[[str], None]


def remove(path: Path) -> None:
    """Remove whatever a client left at ``path``: a file, a symlink or a directory tree."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


class Custody:
    """Hold ``path`` for a check: locked, the user's file kept aside, given back at the end."""

    def __init__(self, path: Path, *, note: Note | None = None) -> None:
        if path.name in ("", ".", ".."):
            raise UserError(f"--output {str(path)!r}: names a directory, not a file", 2)
        self.path = path
        self.lock = path.with_name(f".{path.name}.packetcore-check.lock")
        self.kept = path.with_name(f".{path.name}.packetcore-check.kept")
        self.note = note or (lambda _: None)
        self._holding = False
        self._keeping = False

    # -- taking ----------------------------------------------------------------------------

    def __enter__(self) -> Custody:
        self._refuse_unusable()
        self._take_lock()
        try:
            self._recover()
            if self.path.is_symlink() or self.path.exists():
                self._move(self.path, self.kept, "aside")
                self._keeping = True
                self.note(
                    f"{self.path.name} is kept aside as {self.kept.name} while the check "
                    "runs, and put back at the end"
                )
        except BaseException:
            self._release_lock()
            raise
        return self

    def _refuse_unusable(self) -> None:
        path = self.path
        if path.is_dir() and not path.is_symlink():
            raise UserError(f"--output {path}: is a directory; name the file the client writes", 2)
        if not path.parent.is_dir():
            raise UserError(f"--output {path}: the directory {path.parent} does not exist", 2)

    def _take_lock(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and _alive(holder):
                    raise UserError(
                        f"{self.path} is in use by another packetcore-check (pid {holder}): "
                        "one check of an output at a time (another --cwd or --output, or "
                        "{output} in the command)"
                    ) from None
                with contextlib.suppress(FileNotFoundError):
                    self.lock.unlink()  # its check is gone: taken over
                continue
            except OSError as exc:
                raise UserError(
                    f"cannot write beside {self.path} (the check locks it): {exc.strerror or exc}"
                ) from None
            with os.fdopen(fd, "w") as file:
                file.write(f"{os.getpid()}\n")
            self._holding = True
            return
        raise UserError(f"cannot lock {self.path}: another check keeps taking it")

    def _holder(self) -> int | None:
        try:
            return int(self.lock.read_text().strip())
        except (OSError, ValueError):
            return None

    def _recover(self) -> None:
        """Put back a file an earlier check, killed, kept aside."""
        if not (self.kept.is_symlink() or self.kept.exists()):
            return
        if self.path.is_symlink() or self.path.exists():
            raise UserError(
                f"an earlier check of {self.path.name} was killed and left the file it kept "
                f"aside at {self.kept}; {self.path.name} exists too: keep the one you want "
                "(move it to its name, or delete it), then run again"
            )
        self._move(self.kept, self.path, "back")
        self.note(
            f"put {self.path.name} back from {self.kept.name}, where an earlier check that "
            "was killed had kept it"
        )

    def _move(self, source: Path, target: Path, how: str) -> None:
        try:
            os.replace(source, target)
        except OSError as exc:
            raise UserError(
                f"cannot move {source.name} {how} (to {target.name}): {exc.strerror or exc}"
            ) from None

    # -- giving back -----------------------------------------------------------------------

    def clear(self) -> None:
        """Remove what a scenario's client wrote at the path (the user's file is aside)."""
        remove(self.path)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            with contextlib.suppress(OSError):
                self.clear()
            if self._keeping:
                try:
                    os.replace(self.kept, self.path)
                    self._keeping = False
                except OSError as error:
                    # Kept aside it stays: the next check of the path puts it back.
                    self.note(
                        f"could not put {self.path.name} back ({error.strerror or error}): "
                        f"it is at {self.kept}"
                    )
        finally:
            self._release_lock()

    def _release_lock(self) -> None:
        if self._holding:
            with contextlib.suppress(OSError):
                self.lock.unlink()
            self._holding = False
