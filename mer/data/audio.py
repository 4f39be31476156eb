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
        chunks, first_sample, decoded = [], None, 0
        for frame in container.decode(stream):
            samples = frame.to_ndarray()  # (channels, n) planar or (1, n * channels) packed
            if not frame.format.is_planar:
                samples = samples.reshape(-1, len(frame.layout.channels)).T
            if first_sample is None:
                first_sample = int(round(float(frame.pts * stream.time_base) * rate)) if frame.pts is not None else 0
            chunks.append(samples)
            decoded += samples.shape[1]
            if end is not None and first_sample + decoded >= end * rate:
                break
    if not chunks:
        raise AudioDecodeError(f"{path}: the audio stream decodes to no samples; the file is truncated")
    wave = _to_float(np.concatenate(chunks, axis=1)).mean(axis=0)  # one conversion and down-mix per file
    offset = int(round((start or 0.0) * rate)) - (first_sample or 0)
    stop = None if end is None else int(round((end or 0.0) * rate)) - (first_sample or 0)
    return wave[max(0, offset):stop], rate


def _to_float(samples: np.ndarray) -> np.ndarray:
    if samples.dtype.kind == "f":
        return samples.astype(np.float32)
    info = np.iinfo(samples.dtype)
    return (samples.astype(np.float32) / max(abs(info.min), info.max)).astype(np.float32)
