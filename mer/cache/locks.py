"""Process-owned file locks (POSIX `lockf`): released by the kernel when the owner dies,
so a writer killed with SIGKILL never leaves a lock behind, and they work across hosts
on NFS. Only writers lock; readers never do."""

from __future__ import annotations

import errno
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

READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


class FolderRemoved(CacheError):
    """The folder of a lock file is gone (`mer cache rm` under a running writer): never recreate it."""


class ReadOnlyCache(CacheError):
    """This process cannot create or write the lock file: the cache is read-only here."""


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
    """Lock `path` without waiting; None if another process holds it, or (create=False) if it does not
    exist or cannot be opened for writing here. With create=True a missing folder is FolderRemoved
    (it is never recreated) and a read-only one ReadOnlyCache."""
    path = Path(path)
    with _guard:
        if str(path) in _held_in_this_process:
            return None
        fd = _open_for_lock(path, create)
        if fd is None:
            return None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        _held_in_this_process.add(str(path))
        return HeldLock(path, fd)


def _open_for_lock(path: Path, create: bool) -> int | None:
    if create and not path.parent.is_dir():
        raise _folder_removed(path.parent)
    try:
        return os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o664)
    except FileNotFoundError:
        if create:  # the folder went away between the check and the open
            raise _folder_removed(path.parent) from None
        return None
    except OSError as exc:
        if exc.errno not in READ_ONLY_ERRNOS:
            raise
        if create:
            raise ReadOnlyCache(f"{path.parent}: cannot write here ({exc.strerror}); "
                                "pass --cache a writable folder") from None
        return None


def _folder_removed(folder: Path) -> FolderRemoved:
    return FolderRemoved(f"{folder}: folder removed (by `mer cache rm`?) while this process used it")


def lock(path: Path, timeout: float = 600.0) -> HeldLock:
    """Wait for the exclusive lock on `path` (the file is created if missing, its folder never).
    Short sleeps, so Ctrl-C stops a wait at once."""
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
        delay = min(delay * 2, 0.1)


def is_held_here(path: Path) -> bool:
    with _guard:
        return str(Path(path)) in _held_in_this_process
