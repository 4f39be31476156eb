"""Decoding ahead of compute for `mer extract`: a pool of decoder processes.

Decoding compressed audio (MELD's AAC in mp4) costs about as much CPU per second of audio as
a small encoder's forward pass, and FFmpeg's decoders hold the GIL, so decoder threads cannot
run beside the compute thread. `DecodePool(processes=N)` decodes in N spawned processes (they
import numpy, soundfile, soxr and PyAV, never torch), each batch of utterances cut into pieces
that the processes share. `processes=0` decodes in one background thread of this process.

A decoder that crashes its process (a segfault in FFmpeg on a corrupt file) costs only that
file: the pool is restarted, the piece decoded again, and if it crashes again its files are
decoded one per process so that the culprit is recorded as a failure and the rest survive.

Ctrl-C: the decoder processes start with SIGINT blocked, so a terminal's Ctrl-C (sent to the
whole process group) interrupts only this process, which shuts them down; they neither print
tracebacks nor break the pool (which would read as a crash and record every file as a failure).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from mer.data.audio import load_audio
from mer.data.utterance import Utterance
from mer.errors import MerError

Decoded = tuple[dict[str, np.ndarray], dict[str, str]]  # id -> mono 16 kHz audio; id -> why it failed
PR_SET_PDEATHSIG = 1  # linux/prctl.h
CRASH_REASON = "the audio decoder crashed its process on this file (corrupt or unsupported); re-encode or remove it"


def decode_utterances(utterances: Sequence[Utterance]) -> Decoded:
    """Each utterance's audio, or the reason it could not be decoded."""
    audio, failures = {}, {}
    for utt in utterances:
        try:
            if not utt.audio_path:
                raise MerError(f"{utt.id}: the corpus gives no audio path for this utterance")
            audio[utt.id] = load_audio(utt.audio_path, utt.start, utt.end)
        except MerError as exc:
            failures[utt.id] = str(exc)
    return audio, failures


@dataclass
class PendingDecode:
    pieces: list[tuple[list[Utterance], Future, Executor]]  # each piece, its decoding, the pool it went to


def die_with_parent(parent: int) -> None:
    """In a decoder process: end when the process that started it ends (SIGKILL included), instead of
    living on with ~250 MB of decoder state, blocked on a pipe nobody reads (Linux: PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown is all there is
        return
    if os.getppid() != parent:  # the parent died before the request was in place
        os._exit(0)


class DecodePool:
    """`submit(utterances)` starts decoding them; `result(pending)` waits and returns (audio, failures)."""

    def __init__(self, processes: int, piece_size: int = 16, decode: Callable[[Sequence[Utterance]], Decoded]
                 = decode_utterances):
        self.processes = processes
        self.piece_size = piece_size
        self.decode = decode  # a module-level function: the processes import it by name
        self._executor: Optional[Executor] = None

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def submit(self, utterances: Sequence[Utterance]) -> PendingDecode:
        if not utterances:
            return PendingDecode([])
        size = self.piece_size if self.processes > 1 else len(utterances)
        pieces = [list(utterances[i:i + size]) for i in range(0, len(utterances), size)]
        return PendingDecode([self._submit(piece) for piece in pieces])

    def result(self, pending: PendingDecode) -> Decoded:
        audio, failures = {}, {}
        for piece, future, executor in pending.pieces:
            piece_audio, piece_failures = self._piece_result(piece, future, executor)
            audio.update(piece_audio)
            failures.update(piece_failures)
        return audio, failures

    def _submit(self, piece: list[Utterance]) -> tuple[list[Utterance], Future, Executor]:
        if self._executor is None:
            self._executor = self._new_executor()
        try:
            with _sigint_blocked():  # a submit may start a process, which inherits the blocked signal
                return piece, self._executor.submit(self.decode, piece), self._executor
        except BrokenProcessPool:  # a process died on an earlier piece whose result is not read yet
            self._restart()
            return self._submit(piece)

    def _new_executor(self) -> Executor:
        if self.processes <= 0:
            return ThreadPoolExecutor(1, thread_name_prefix="decode")
        # spawn, not fork: this process runs torch's and HDF5's threads, which fork does not copy safely
        return ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=die_with_parent, initargs=(os.getpid(),))

    def _piece_result(self, piece: list[Utterance], future: Future, executor: Executor) -> Decoded:
        try:
            return future.result()
        except BrokenProcessPool:  # some process of the pool died: maybe on this piece, maybe another
            pass
        if executor is self._executor:  # else it was replaced already, with the pieces now running there
            self._restart()
        try:
            return self._await(self._submit(piece))
        except BrokenProcessPool:  # this piece kills decoders: find the file, one per process
            self._restart()
            return self._one_by_one(piece)

    @staticmethod
    def _await(submitted: tuple[list[Utterance], Future, Executor]) -> Decoded:
        return submitted[1].result()

    def _one_by_one(self, piece: list[Utterance]) -> Decoded:
        audio, failures = {}, {}
        for utt in piece:
            try:
                utt_audio, utt_failures = self._await(self._submit([utt]))
            except BrokenProcessPool:
                self._restart()
                utt_audio, utt_failures = {}, {utt.id: f"{utt.audio_path}: {CRASH_REASON}"}
            audio.update(utt_audio)
            failures.update(utt_failures)
        return audio, failures

    def _restart(self) -> None:
        """A fresh pool; the broken one's futures have all failed, so none is cancelled here."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


@contextlib.contextmanager
def _sigint_blocked():
    """SIGINT blocked in this thread meanwhile: processes started here inherit the blocked signal
    through exec, and a Ctrl-C that comes meanwhile is not lost (another thread, or this one
    right after, takes it)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
