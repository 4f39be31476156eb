"""Ctrl-C at safe points. Work that must not be cut runs with SIGINT deferred, and the
KeyboardInterrupt comes right after it: openSMILE feeds audio through a ctypes callback, which
prints and swallows any exception raised inside it (so a Ctrl-C there was lost and the run went
on), and a shard commit should finish so that the summary counts what is on disk."""

from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def interrupts_deferred():
    """SIGINT handled after the block, by the handler that was there before (only the main thread
    receives signals in Python, so elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    if received:
        if callable(previous):
            previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
        elif previous in (signal.SIG_DFL, None):
            raise KeyboardInterrupt
