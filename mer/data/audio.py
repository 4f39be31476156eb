"""Audio decoding: any container libsndfile or PyAV reads, any rate and channel count,
to mono float32 at 16 kHz, optionally cut to [start, end) seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf
import soxr

from mer.errors import AudioDecodeError

SAMPLE_RATE = 16000
# Formats libsndfile decodes natively (and can seek in); everything else goes through PyAV.
_SNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif", ".au", ".w64", ".caf"}


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
            wave, rate = _decode_sndfile(path, start, end)
        else:
            wave, rate = _decode_av(path, start, end)
    except AudioDecodeError:
        raise
    except Exception as exc:  # decoders raise many types; the user needs the file and the cause
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AudioDecodeError(f"{path}: cannot decode audio ({reason}); the file is corrupt or not audio") from exc
    wave = resample(wave, rate, sample_rate)
    if wave.size == 0:
        raise AudioDecodeError(f"{path}: no audio samples in segment [{start}, {end}] s; check the times")
    return wave


def resample(wave: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    if rate == target:
        return np.ascontiguousarray(wave, dtype=np.float32)
    return soxr.resample(wave.astype(np.float32), rate, target, quality="HQ").astype(np.float32)


def _decode_sndfile(path: Path, start: Optional[float], end: Optional[float]) -> tuple[np.ndarray, int]:
    with sf.SoundFile(str(path)) as f:
        rate = f.samplerate
        first = int(round((start or 0.0) * rate))
        last = f.frames if end is None else min(f.frames, int(round(end * rate)))
        if first > 0:
            f.seek(min(first, f.frames))
        data = f.read(max(0, last - first), dtype="float32", always_2d=True)
    return data.mean(axis=1), rate


def _decode_av(path: Path, start: Optional[float], end: Optional[float]) -> tuple[np.ndarray, int]:
    import av  # imported here: PyAV loads FFmpeg libraries, which is slow and unneeded for wav

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise AudioDecodeError(f"{path}: the file has no audio stream; give a file with sound")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or stream.rate
        if start and start > 1.0 and stream.time_base:
            container.seek(int((start - 1.0) / stream.time_base), stream=stream, any_frame=False, backward=True)
        samples, first_sample = _FrameCollector(), None
        for frame in container.decode(stream):
            if first_sample is None:
                first_sample = int(round(float(frame.pts * stream.time_base) * rate)) if frame.pts is not None else 0
            samples.add(frame)
            if end is not None and first_sample + samples.count >= end * rate:
                break
        wave = samples.mono()
    if wave is None:
        raise AudioDecodeError(f"{path}: the audio stream decodes to no samples; the file is truncated")
    offset = int(round((start or 0.0) * rate)) - (first_sample or 0)
    stop = None if end is None else int(round((end or 0.0) * rate)) - (first_sample or 0)
    return wave[max(0, offset):stop], rate


class _FrameCollector:
    """Decoded frames gathered in FFmpeg's FIFO and converted to numpy once per file (per-frame
    conversion cost as much as decoding); a stream whose format changes mid-file is converted
    frame by frame instead."""

    def __init__(self):
        import av

        self.fifo, self.arrays, self.count = av.AudioFifo(), [], 0

    def add(self, frame) -> None:
        self.count += frame.samples
        frame.pts = None  # the FIFO checks pts continuity; seeking and priming samples break it
        if not self.arrays:
            try:
                self.fifo.write(frame)
                return
            except ValueError:  # format, layout or rate changed mid-stream
                if self.fifo.samples:
                    self.arrays.append(self._mono(self.fifo.read()))
        self.arrays.append(self._mono(frame))

    def mono(self) -> Optional[np.ndarray]:
        if self.fifo.samples and not self.arrays:
            self.arrays.append(self._mono(self.fifo.read()))
        if not self.arrays:
            return None
        return np.concatenate(self.arrays) if len(self.arrays) > 1 else self.arrays[0]

    @staticmethod
    def _mono(frame) -> np.ndarray:
        samples = frame.to_ndarray()  # (channels, n) planar or (1, n * channels) packed
        if not frame.format.is_planar:
            samples = samples.reshape(-1, len(frame.layout.channels)).T
        return _to_float(samples).mean(axis=0)


def _to_float(samples: np.ndarray) -> np.ndarray:
    if samples.dtype.kind == "f":
        return samples.astype(np.float32)
    info = np.iinfo(samples.dtype)
    return (samples.astype(np.float32) / max(abs(info.min), info.max)).astype(np.float32)
