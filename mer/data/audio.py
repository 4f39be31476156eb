"""Audio decoding: any container libsndfile or PyAV reads, any rate and channel count,
to mono float32 at 16 kHz, optionally cut to [start, end) seconds.

Long and multi-channel files are decoded in blocks: each block is down-mixed to mono and fed
to a streaming resampler whose output fills one array, so peak memory is the 16 kHz mono
output plus one block, whatever the input's length, rate or channel count. Streaming soxr gives
the same samples as one-shot `resample` (tests/test_audio.py checks it)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import soundfile as sf
import soxr

from mer.errors import AudioDecodeError

SAMPLE_RATE = 16000
# Formats libsndfile decodes natively (and can seek in); everything else goes through PyAV.
_SNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif", ".au", ".w64", ".caf"}
# Input values (samples x channels) decoded per block: 4 MiB of float32, 22 s of mono 48 kHz,
# 1.4 s of 8-channel 96 kHz; larger blocks decode no faster.
BLOCK_VALUES = 1 << 20


def load_audio(path: str | Path, start: Optional[float] = None, end: Optional[float] = None,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode `path` to a mono float32 waveform at `sample_rate`, cut to [start, end) seconds."""
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"{path}: audio file not found; check the corpus root or the manifest path")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"{path}: audio file is empty (0 bytes); re-download or remove it")
    if start is not None and end is not None and end < start:
        raise AudioDecodeError(f"{path}: segment end {end} s is before start {start} s; fix the annotation")
    try:
        if path.suffix.lower() in _SNDFILE_SUFFIXES:
            wave = _decode_sndfile(path, start, end, sample_rate)
        else:
            wave = _decode_av(path, start, end, sample_rate)
    except AudioDecodeError:
        raise
    except Exception as exc:  # decoders raise many types; the user needs the file and the cause
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AudioDecodeError(f"{path}: cannot decode audio ({reason}); the file is corrupt or not audio") from exc
    if wave.size == 0:
        raise AudioDecodeError(f"{path}: no audio samples in segment [{start}, {end}] s; check the times")
    return wave


def resample(wave: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """One-shot resampling of a whole mono waveform (load_audio streams instead)."""
    if rate == target:
        return np.ascontiguousarray(wave, dtype=np.float32)
    return soxr.resample(wave.astype(np.float32), rate, target, quality="HQ").astype(np.float32)


class _MonoStream:
    """Consecutive mono blocks at `rate` in; one float32 array at `target` out, resampled as the
    blocks come. `expected` input samples (when known) sizes the output once, without regrowth."""

    def __init__(self, rate: int, target: int, expected: Optional[int] = None):
        self.rate, self.target = rate, target
        self._resampler = None if rate == target else soxr.ResampleStream(rate, target, 1, dtype="float32",
                                                                           quality="HQ")
        self._out = np.empty(self._output_size(expected or 0), dtype=np.float32)
        self._size = 0

    def add(self, mono: np.ndarray, last: bool = False) -> None:
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono, last=last)
        self._append(mono)

    def finish(self) -> np.ndarray:
        self.add(np.zeros(0, dtype=np.float32), last=True)
        wave = self._out[:self._size]
        # a view would keep an over-estimated buffer alive; more than 1 s of slack is worth a copy
        return wave if self._out.size - self._size <= self.target else wave.copy()

    def _output_size(self, samples: int) -> int:
        return -(-samples * self.target // self.rate) + 64  # soxr may give a sample or two more

    def _append(self, samples: np.ndarray) -> None:
        needed = self._size + len(samples)
        if needed > self._out.size:
            grown = np.empty(max(needed, 2 * self._out.size), dtype=np.float32)
            grown[:self._size] = self._out[:self._size]
            self._out = grown
        self._out[self._size:needed] = samples
        self._size = needed


class _Cut:
    """Passes on samples [first, stop) of a sequence that arrives in blocks (indices from its start)."""

    def __init__(self, first: int, stop: Optional[int], sink: Callable[[np.ndarray], None]):
        self.first, self.stop, self.sink, self.position = first, stop, sink, 0

    def __call__(self, block: np.ndarray) -> None:
        low = max(0, self.first - self.position)
        high = len(block) if self.stop is None else max(0, min(len(block), self.stop - self.position))
        self.position += len(block)
        if high > low:
            self.sink(block[low:high])


def _block_frames(channels: int) -> int:
    return max(1, BLOCK_VALUES // max(1, channels))


def _decode_sndfile(path: Path, start: Optional[float], end: Optional[float], target: int) -> np.ndarray:
    with sf.SoundFile(str(path)) as f:
        rate = f.samplerate
        first = int(round((start or 0.0) * rate))
        last = f.frames if end is None else min(f.frames, int(round(end * rate)))
        if first > 0:
            f.seek(min(first, f.frames))
        remaining = max(0, last - first)
        out = _MonoStream(rate, target, remaining)
        while remaining > 0:
            block = f.read(min(_block_frames(f.channels), remaining), dtype="float32", always_2d=True)
            if not len(block):
                break
            out.add(_down_mix(block))
            remaining -= len(block)
    return out.finish()


def _down_mix(block: np.ndarray) -> np.ndarray:
    """(samples, channels) -> (samples,); a mono block is passed on without a copy."""
    return block[:, 0] if block.shape[1] == 1 else block.mean(axis=1)


def _decode_av(path: Path, start: Optional[float], end: Optional[float], target: int) -> np.ndarray:
    import av  # imported here: PyAV loads FFmpeg libraries, which is slow and unneeded for wav

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise AudioDecodeError(f"{path}: the file has no audio stream; give a file with sound")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or stream.rate
        if start and start > 1.0 and stream.time_base:
            container.seek(int((start - 1.0) / stream.time_base), stream=stream, any_frame=False, backward=True)
        out = _MonoStream(rate, target, _expected_samples(container, stream, rate, start, end))
        collector, first_sample = None, None
        for frame in container.decode(stream):
            if collector is None:
                first_sample = int(round(float(frame.pts * stream.time_base) * rate)) if frame.pts is not None else 0
                collector = _FrameCollector(_Cut(int(round((start or 0.0) * rate)) - first_sample,
                                                 None if end is None else int(round(end * rate)) - first_sample,
                                                 out.add))
            collector.add(frame)
            if end is not None and first_sample + collector.count >= end * rate:
                break
    if collector is None or not collector.count:
        raise AudioDecodeError(f"{path}: the audio stream decodes to no samples; the file is truncated")
    collector.flush()
    return out.finish()


def _expected_samples(container, stream, rate: int, start: Optional[float], end: Optional[float]) -> Optional[int]:
    """Input samples of the segment from the header's duration (None when the header has none)."""
    if container.duration is not None:
        seconds = container.duration / 1_000_000  # av.time_base
    elif stream.duration is not None and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    else:
        return None
    if end is not None:
        seconds = min(seconds, end)
    return max(0, int((seconds - (start or 0.0)) * rate))


class _FrameCollector:
    """Decoded frames gathered in FFmpeg's FIFO and handed on as mono numpy blocks of about
    BLOCK_VALUES values (per-frame conversion cost as much as decoding; whole-file conversion
    held every channel of the file at once). A format change mid-stream starts a new FIFO."""

    def __init__(self, on_block: Callable[[np.ndarray], None]):
        import av

        self._new_fifo = av.AudioFifo
        self.fifo, self.on_block, self.count = av.AudioFifo(), on_block, 0

    def add(self, frame) -> None:
        self.count += frame.samples
        frame.pts = None  # the FIFO checks pts continuity; seeking and priming samples break it
        try:
            self.fifo.write(frame)
        except ValueError:  # format, layout or rate changed mid-stream
            self.flush()
            self.fifo = self._new_fifo()
            self.fifo.write(frame)
        if self.fifo.samples >= _block_frames(len(frame.layout.channels)):
            self.flush()

    def flush(self) -> None:
        if self.fifo.samples:
            self.on_block(self._mono(self.fifo.read()))

    @staticmethod
    def _mono(frame) -> np.ndarray:
        floats = _to_float(_frame_samples(frame))
        return floats[0] if len(floats) == 1 else floats.mean(axis=0)


def _frame_samples(frame) -> np.ndarray:
    """(channels, samples) of an audio frame. Not frame.to_ndarray(): PyAV 18 lists one plane too
    many for 8-channel planar audio (7.1 AAC) and to_ndarray then reads past the last one and
    crashes the process; the planes are read here up to the channel count."""
    from av.audio.frame import format_dtypes

    channels = len(frame.layout.channels)
    dtype = np.dtype(format_dtypes[frame.format.name])
    if frame.format.is_planar:
        return np.stack([np.frombuffer(plane, dtype=dtype, count=frame.samples) for plane in frame.planes[:channels]])
    return np.frombuffer(frame.planes[0], dtype=dtype, count=frame.samples * channels).reshape(-1, channels).T


def _to_float(samples: np.ndarray) -> np.ndarray:
    if samples.dtype.kind == "f":
        return samples.astype(np.float32, copy=False)
    info = np.iinfo(samples.dtype)
    floats = samples.astype(np.float32)
    floats /= max(abs(info.min), info.max)
    return floats
