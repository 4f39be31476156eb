"""Spectral features computed in torch on padded batches: `mfcc40` and `logmfb80-d2`.

Both follow librosa's definitions exactly (tests compare against librosa):

* STFT: periodic Hann window of `n_fft` samples, hop `hop_length`, `center=True` with
  zero padding of n_fft // 2 on each side (librosa's `pad_mode="constant"`), power 2.
  An item of n samples has 1 + n // hop_length frames (center=True), or
  1 + (n - n_fft) // hop_length (center=False, clips shorter than n_fft are refused).
* Mel filterbank: librosa's default Slaney mel scale (htk=False) and Slaney area
  normalisation (norm="slaney"), written as a matrix.
* `mfcc40`: 128 mel bands (librosa's default), `librosa.power_to_db(ref=1, amin=1e-10,
  top_db=80)` (the 80 dB floor is relative to the maximum of the item's OWN frames), DCT-II
  ortho, first 40 coefficients: `librosa.feature.mfcc(y, sr=16000, n_mfcc=40, n_fft=400,
  hop_length=160)`.
* `logmfb80-d2`: 80 mel bands, natural log `ln(mel + 1e-6)` (chosen over power_to_db because
  it has no per-utterance top_db floor: a frame's value depends only on its own window), then
  the delta and delta-delta of `librosa.feature.delta(width=9, mode="interp")`, concatenated
  on the feature axis as [static 80 | delta 80 | delta-delta 80] = 240.

Deltas of clips with fewer frames than the delta width (< 9 frames, i.e. < 0.08 s), where
librosa refuses mode="interp", use the same rule with the window shrunk to the whole clip:
the derivative of the least-squares polynomial (degree min(order, frames - 1)) fitted to all
frames; a derivative of an order above that degree is 0.

Measured agreement with librosa 0.11 (float32; noise, sines, a full-scale sine and silence,
0.01 s to 2 s; asserted in tests/test_spectral.py): mfcc40 max abs diff <= 1.1e-6 x the
largest |coefficient| (1.2e-3 at c0 = -1131 of silence; tolerance 5e-6 x); logmfb80-d2
static part < 1.3e-4 (natural-log units; tolerance 1e-3), deltas < 2.1e-5 (tolerance 1e-4).
A batch gives the same values as each item alone: padding never reaches an item's own
frames (max abs diff 4e-5 for MFCC, 1e-6 for logmfb, from batched FFT rounding).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from mer.errors import MerError
from mer.extract.base import EXTRACTORS, ExtractItem, Extractor, FeatureSpec, with_options

LOG_TYPES = ("db", "ln")
# The STFT runs over blocks of this many frames: its complex output and power spectrum are 10x
# the size of the mel output, so a 10-minute clip in one piece held about 300 MB at once.
STFT_BLOCK_FRAMES = 2048


class SpectralError(MerError):
    """Bad spectral options, or audio that cannot give a frame."""


@dataclass(frozen=True)
class SpectralConfig:
    """Every option of the spectral family; the ones in use go into spec.config (they change values)."""

    sample_rate: int = 16000
    n_fft: int = 400  # 25 ms window at 16 kHz (win_length = n_fft)
    hop_length: int = 160  # 10 ms hop: 100 frames per second
    window: str = "hann"  # periodic Hann, as scipy.signal.get_window("hann", n_fft)
    center: bool = True  # zero-pad n_fft // 2 on each side (librosa pad_mode="constant")
    power: float = 2.0  # |STFT| ** power
    n_mels: int = 80
    fmin: float = 0.0
    fmax: Optional[float] = None  # None: sample_rate / 2
    mel_scale: str = "slaney"  # librosa htk=False
    mel_norm: str = "slaney"  # librosa norm="slaney" (area normalisation)
    log: str = "ln"  # "ln": ln(mel + log_offset); "db": librosa.power_to_db(ref=1, amin, top_db)
    log_offset: float = 1e-6  # "ln" only
    amin: float = 1e-10  # "db" only
    top_db: Optional[float] = 80.0  # "db" only; floor relative to the item's own maximum
    n_mfcc: int = 0  # 0: log-mel output; > 0: DCT-II ortho, first n_mfcc coefficients
    delta_order: int = 0  # 0: static only; 1: + delta; 2: + delta + delta-delta
    delta_width: int = 9  # librosa.feature.delta width (odd), mode="interp"

    def __post_init__(self):
        checks = {
            f"log must be one of {LOG_TYPES}": self.log in LOG_TYPES,
            "window must be 'hann'": self.window == "hann",
            "mel_scale and mel_norm must be 'slaney'": self.mel_scale == self.mel_norm == "slaney",
            "n_mfcc must be between 0 and n_mels": 0 <= self.n_mfcc <= self.n_mels,
            "delta_order must be 0, 1 or 2": self.delta_order in (0, 1, 2),
            "delta_width must be odd and >= 3": self.delta_width >= 3 and self.delta_width % 2 == 1,
            "hop_length must be between 1 and n_fft": 0 < self.hop_length <= self.n_fft,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise SpectralError(f"spectral options: {'; '.join(failed)}")

    @property
    def mel_fmax(self) -> float:
        return self.sample_rate / 2 if self.fmax is None else float(self.fmax)

    @property
    def dim(self) -> int:
        return (self.n_mfcc or self.n_mels) * (1 + self.delta_order)

    def num_frames(self, n_samples: int) -> int:
        if self.center:
            return 1 + n_samples // self.hop_length
        return 1 + (n_samples - self.n_fft) // self.hop_length

    def min_samples(self) -> int:
        return 1 if self.center else self.n_fft

    def to_spec_config(self) -> dict:
        """Every option that changes values; options the chosen log / deltas do not use are left out."""
        unused = {"db": {"log_offset"}, "ln": {"amin", "top_db"}}[self.log]
        unused |= set() if self.delta_order else {"delta_width"}
        config = {key: value for key, value in asdict(self).items() if key not in unused}
        return {**config, "fmax": self.mel_fmax}


# The registered presets: the only place their defaults live.
MFCC40 = SpectralConfig(n_mels=128, log="db", n_mfcc=40)
LOGMFB80_D2 = SpectralConfig(n_mels=80, log="ln", delta_order=2)


# ----------------------------------------------------------------------------- filterbank, DCT


# Slaney's Auditory Toolbox mel scale (librosa htk=False): linear below 1 kHz, logarithmic above.
HZ_PER_MEL = 200.0 / 3
LOG_REGION_HZ = 1000.0
LOG_REGION_MEL = LOG_REGION_HZ / HZ_PER_MEL
LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    logarithmic = LOG_REGION_MEL + np.log(np.maximum(hz, LOG_REGION_HZ) / LOG_REGION_HZ) / LOG_STEP
    return np.where(hz >= LOG_REGION_HZ, logarithmic, hz / HZ_PER_MEL)


def mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    logarithmic = LOG_REGION_HZ * np.exp(LOG_STEP * (np.maximum(mels, LOG_REGION_MEL) - LOG_REGION_MEL))
    return np.where(mels >= LOG_REGION_MEL, logarithmic, HZ_PER_MEL * mels)


def slaney_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, area-normalised: librosa.filters.mel defaults."""
    fft_hz = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)  # (n_freqs,)
    edges_hz = mel_to_hz_slaney(np.linspace(hz_to_mel_slaney(fmin), hz_to_mel_slaney(fmax), n_mels + 2))
    widths = np.diff(edges_hz)  # (n_mels + 1,)
    ramps = edges_hz[:, None] - fft_hz[None, :]  # (n_mels + 2, n_freqs)
    rising = -ramps[:-2] / widths[:-1, None]  # (n_mels, n_freqs)
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights.astype(np.float32)


class BandedFilterbank(torch.nn.Module):
    """`weights @ power` for a banded (triangular-filter) weight matrix: rows in groups of
    `group`, each multiplied only with the frequency bins its filters cover. Same sums as the dense
    product without its zeros: 15x fewer multiply-adds for 128 Slaney mels on 201 bins."""

    def __init__(self, weights: np.ndarray, group: int = 8):
        super().__init__()
        self.bands: list[tuple[int, int]] = []  # (first bin, last bin + 1) per group
        for index, first_row in enumerate(range(0, len(weights), group)):
            rows = weights[first_row:first_row + group]  # (group, n_freqs)
            used = np.flatnonzero(rows.any(axis=0))
            low, high = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 1)
            self.register_buffer(f"band{index}", torch.from_numpy(np.ascontiguousarray(rows[:, low:high])))
            self.bands.append((low, high))

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        """power (batch, n_freqs, frames) -> (batch, n_filters, frames)."""
        pieces = [torch.matmul(getattr(self, f"band{i}"), power[:, low:high])
                  for i, (low, high) in enumerate(self.bands)]
        return torch.cat(pieces, dim=1)


def dct2_ortho_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) rows of the orthonormal DCT-II: scipy.fft.dct(x, type=2, norm="ortho")[:n_out]."""
    k = np.arange(n_out)[:, None]
    n = np.arange(n_in)[None, :]
    basis = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * math.sqrt(2.0 / n_in)
    basis[0] /= math.sqrt(2.0)
    return basis.astype(np.float32)


# ----------------------------------------------------------------------------- deltas


@lru_cache(maxsize=None)
def poly_derivative_matrix(window: int, order: int) -> np.ndarray:
    """(window, window) M with (M @ y)[i] = the order-th derivative at frame i of the least-squares
    polynomial of degree min(order, window - 1) fitted to y[0:window]: scipy's savgol 'interp'
    rule (librosa.feature.delta uses polyorder = deriv = order). Zero when the degree < order."""
    degree = min(order, window - 1)
    if degree < order:
        return np.zeros((window, window))
    t = np.arange(window, dtype=np.float64) - (window - 1) / 2  # centred for conditioning
    powers = np.arange(degree + 1)
    coefficients_from_samples = np.linalg.pinv(t[:, None] ** powers)  # (degree + 1, window)
    falling = np.array([math.perm(int(k), order) for k in powers], dtype=np.float64)  # k! / (k - order)!
    derivative_of_powers = falling * t[:, None] ** np.maximum(powers - order, 0)  # (window, degree + 1)
    return derivative_of_powers @ coefficients_from_samples


class SavgolDeltas(torch.nn.Module):
    """librosa.feature.delta(width, order=1..max_order, mode="interp") over the last axis, for a
    padded batch: a convolution for inner frames, per-item polynomial fits for each item's edges."""

    def __init__(self, width: int, max_order: int):
        super().__init__()
        self.width, self.half, self.orders = width, width // 2, range(1, max_order + 1)
        full = np.stack([poly_derivative_matrix(width, order) for order in self.orders])  # (orders, width, width)
        full = torch.from_numpy(full).float()
        self.register_buffer("kernel", full[:, self.half, None, :].contiguous())  # (orders, 1, width)
        self.register_buffer("head", full[:, : self.half])  # (orders, half, width)
        self.register_buffer("tail", full[:, self.width - self.half :])  # (orders, half, width)

    def forward(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """x (batch, channels, frames) -> (batch, orders, channels, frames), valid up to each length."""
        batch, channels, frames = x.shape
        out = x.new_zeros(batch, len(self.orders), channels, frames)
        if frames >= self.width:
            inner = F.conv1d(x.reshape(batch * channels, 1, frames), self.kernel)  # (batch * channels, orders, inner)
            inner = inner.reshape(batch, channels, len(self.orders), -1).transpose(1, 2)  # (batch, orders, chan, inner)
            out[..., self.half : frames - self.half] = inner
        for i, length in enumerate(lengths):
            self._fit_edges(x[i, :, :length], out[i, :, :, :length])
        return out

    def _fit_edges(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """x (channels, length); out (orders, channels, length), filled in place at the edges."""
        length = x.shape[-1]
        if length >= self.width:
            out[..., : self.half] = torch.einsum("ohw,cw->och", self.head, x[:, : self.width])
            out[..., length - self.half :] = torch.einsum("ohw,cw->och", self.tail, x[:, length - self.width :])
            return
        whole = np.stack([poly_derivative_matrix(length, order) for order in self.orders])  # (orders, length, length)
        out[:] = torch.einsum("otw,cw->oct", torch.from_numpy(whole).to(x), x)


# ----------------------------------------------------------------------------- the extractor


class SpectralExtractor(Extractor):
    """Log-mel / MFCC (+ deltas) on padded batches, on the device given to `load`."""

    def __init__(self, name: str, config: SpectralConfig):
        self.config = config
        self.spec = FeatureSpec(name=name, modality="audio", granularity="frame", dim=config.dim,
                                frame_rate=config.sample_rate / config.hop_length, dtype="float16",
                                config=config.to_spec_config())
        self._device: Optional[torch.device] = None

    def load(self, device: str = "cpu") -> None:
        cfg = self.config
        self._device = torch.device(device)
        self._window = torch.hann_window(cfg.n_fft, periodic=True, device=self._device)
        mel = slaney_mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.mel_fmax)
        self._mel_filterbank = BandedFilterbank(mel).to(self._device)  # (n_mels, n_freqs), banded
        self._dct = None
        if cfg.n_mfcc:
            self._dct = torch.from_numpy(dct2_ortho_matrix(cfg.n_mels, cfg.n_mfcc)).to(self._device)  # (n_mfcc, n_mels)
        self._deltas = SavgolDeltas(cfg.delta_width, cfg.delta_order).to(self._device) if cfg.delta_order else None

    def __getstate__(self) -> dict:
        return {"config": self.config, "spec": self.spec, "_device": None}  # each process loads its own

    @torch.inference_mode()
    def extract(self, items: list[ExtractItem]) -> list[np.ndarray]:
        if self._device is None:
            self.load("cpu")
        if not items:
            return []
        waves = [self._checked_audio(item) for item in items]
        lengths = [self.config.num_frames(len(wave)) for wave in waves]
        batch = self._pad_stack(waves)  # (batch, samples), centre padding included
        features = self._log_mel(batch, lengths)  # (batch, n_mels, frames)
        if self._dct is not None:
            features = torch.matmul(self._dct, features)  # (batch, n_mfcc, frames)
        if self._deltas is not None:
            deltas = self._deltas(features, lengths)  # (batch, orders, channels, frames)
            features = torch.cat([features, deltas.flatten(1, 2)], dim=1)  # (batch, dim, frames)
        features = features.transpose(1, 2).float().cpu()  # (batch, frames, dim)
        return [features[i, :length].numpy().copy() for i, length in enumerate(lengths)]

    def _checked_audio(self, item: ExtractItem) -> np.ndarray:
        wave = item.audio
        if wave is None or wave.ndim != 1:
            raise SpectralError(f"{item.utterance.id}: {self.spec.name} needs mono audio (1-D), got "
                                f"{None if wave is None else wave.shape}; decode it with mer.data.audio.load_audio")
        if len(wave) < self.config.min_samples():
            raise SpectralError(f"{item.utterance.id}: {len(wave)} samples is too short for {self.spec.name} "
                                f"(needs >= {self.config.min_samples()}); drop the clip or use center=True")
        return wave

    def _pad_stack(self, waves: list[np.ndarray]) -> torch.Tensor:
        """(batch, margin + longest + margin): zeros are librosa's centre padding (margin n_fft // 2
        with center=True) and the padding of shorter items, written in the one copy of the audio."""
        margin = self.config.n_fft // 2 if self.config.center else 0
        longest = max(len(wave) for wave in waves)
        batch = np.zeros((len(waves), margin + longest + margin), dtype=np.float32)
        for row, wave in zip(batch, waves):
            row[margin:margin + len(wave)] = wave
        return torch.from_numpy(batch).to(self._device)

    def _log_mel(self, batch: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        cfg = self.config
        total_frames = 1 + (batch.shape[1] - cfg.n_fft) // cfg.hop_length
        mel = torch.empty(batch.shape[0], cfg.n_mels, total_frames, device=batch.device)  # filled block by block
        for first in range(0, total_frames, STFT_BLOCK_FRAMES):
            frames = min(STFT_BLOCK_FRAMES, total_frames - first)
            samples = batch[:, first * cfg.hop_length:(first + frames - 1) * cfg.hop_length + cfg.n_fft]
            mel[:, :, first:first + frames] = self._mel_power(samples)
        if cfg.log == "ln":
            return mel.add_(cfg.log_offset).log_()
        return self._power_to_db(mel, lengths)

    def _mel_power(self, samples: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, n_mels, frames): the mel-filtered power of frames that start in `samples`."""
        cfg = self.config
        stft = torch.stft(samples, n_fft=cfg.n_fft, hop_length=cfg.hop_length, window=self._window,
                          center=False, return_complex=True)  # (batch, n_freqs, frames)
        magnitude_squared = stft.real.square().addcmul_(stft.imag, stft.imag)  # |X|^2, no sqrt, one pass
        del stft
        power = magnitude_squared if cfg.power == 2.0 else magnitude_squared ** (cfg.power / 2)
        return self._mel_filterbank(power)

    def _power_to_db(self, mel: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """librosa.power_to_db(ref=1.0): 10 log10(max(amin, S)), floored at (item max - top_db).
        The item's max is taken on the power before the log (the log is monotonic), over its own frames."""
        cfg = self.config
        if cfg.top_db is not None:
            peaks = torch.stack([mel[i, :, :length].amax() for i, length in enumerate(lengths)])  # (batch,)
            floor = 10.0 * torch.log10(peaks.clamp(min=cfg.amin)) - cfg.top_db
        db = mel.clamp_(min=cfg.amin).log10_().mul_(10.0)  # (batch, n_mels, frames), in place
        if cfg.top_db is not None:
            for item, item_floor in zip(db, floor):
                item.clamp_(min=float(item_floor))
        return db


def build_spectral(name: str, preset: SpectralConfig, options: dict) -> SpectralExtractor:
    return SpectralExtractor(name, with_options(name, preset, options, SpectralError))


@EXTRACTORS.register("mfcc40")
def mfcc40(**options) -> SpectralExtractor:
    return build_spectral("mfcc40", MFCC40, options)


@EXTRACTORS.register("logmfb80-d2")
def logmfb80_d2(**options) -> SpectralExtractor:
    return build_spectral("logmfb80-d2", LOGMFB80_D2, options)
