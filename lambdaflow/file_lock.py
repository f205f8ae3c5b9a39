"""Exclusive locks on files (`flock`): one running stack per data directory, one broker per storage
directory, one store upgrade at a time. The OS releases a lock when every copy of its descriptor is closed,
so a process killed with SIGKILL never leaves one behind; the file's first line names the holder."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path
from typing import TextIO


class LockHeld(RuntimeError):
    """Another process holds the lock; `holder` is what it wrote on the lock file's first line."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by {holder}")
        self.path, self.holder = path, holder


def lock_file(path: Path, wait_s: float | None = 0.0) -> TextIO:
    """The open file at `path`, exclusively locked (created if missing, its content kept); `LockHeld` once
    `wait_s` has passed (None: wait as long as it takes). Close it to release the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    deadline = None if wait_s is None else time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
            return handle
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                handle.seek(0)
                holder = handle.readline().strip() or "unknown"
                handle.close()
                raise LockHeld(path, holder) from None
            time.sleep(0.2)


def write_holder(handle: TextIO, *lines: str) -> None:
    """Name the lock's holder (replacing what an earlier holder wrote)."""
    handle.seek(0)
    handle.truncate()
    handle.writelines(f"{line}\n" for line in lines)
    handle.flush()
