"""Process-owned file locks (POSIX `lockf`): released by the kernel when the owner dies,
so a writer killed with SIGKILL never leaves a lock behind, and they work across hosts
on NFS. Only writers lock; readers never do."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from mer.errors import CacheError

# POSIX record locks belong to the process, and closing ANY descriptor of a file drops them:
# this process must never open a file it holds a lock on through another descriptor.
_held_in_this_process: set[str] = set()
_guard = threading.Lock()


class HeldLock:
    """An exclusive lock on `path`, held until `release()`."""

    def __init__(self, path: Path, fd: int):
        self.path = Path(path)
        self._fd = fd

    def write(self, data: bytes) -> None:
        """Replace the file's content through the locking descriptor (another descriptor would drop the lock)."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def release(self) -> None:
        if self._fd < 0:
            return
        with _guard:
            _held_in_this_process.discard(str(self.path))
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "HeldLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def try_lock(path: Path, create: bool = True) -> HeldLock | None:
    """Lock `path` without waiting; None if another process holds it (or it does not exist)."""
    path = Path(path)
    with _guard:
        if str(path) in _held_in_this_process:
            return None
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        try:
            fd = os.open(path, flags, 0o664)
        except FileNotFoundError:
            return None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        _held_in_this_process.add(str(path))
        return HeldLock(path, fd)


def lock(path: Path, timeout: float = 600.0) -> HeldLock:
    """Wait for the exclusive lock on `path` (created if missing)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        held = try_lock(path)
        if held is not None:
            return held
        if time.monotonic() > deadline:
            raise CacheError(f"{path}: still locked by another writer after {timeout:.0f} s; "
                             "if no `mer extract` is running, the filesystem does not release locks: remove the file")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def is_held_here(path: Path) -> bool:
    with _guard:
        return str(Path(path)) in _held_in_this_process
