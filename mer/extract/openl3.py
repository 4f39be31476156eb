"""OpenL3 audio embeddings (Cramer et al., ICASSP 2019): the L3-Net audio subnetwork in PyTorch,
with weights converted from the official Keras files (`python -m mer.extract.openl3_convert`).

Registered names (the size picks the final max-pool; both sizes share one weights file):

    openl3-512          frame       512   10 frames/s (1 / hop_seconds)
    openl3-6144         frame      6144
    openl3-512-mean     utterance   512   mean of the frame embeddings
    openl3-6144-mean    utterance  6144

Options: content_type=env|music (env), input_repr=mel256|mel128|linear (mel256),
weights=PATH (or $MER_OPENL3_WEIGHTS): a converted .safetensors/.pt file, or a folder holding
`openl3_audio_<input_repr>_<content_type>.safetensors` (or .pt); hop_seconds=0.1; center=true;
pool=none|mean; resample_quality=HQ|VHQ (soxr); window_batch=32 (windows per forward pass:
memory only, not part of the cache key). Weights are never downloaded: missing weights fail at
construction with one line naming the option and the environment variable. The spec config
holds every value-changing option plus `weights_sha256`, so two weight files never share a cache.

What the original does, and where each constant comes from (openl3 0.3.x `core.py` and
`models.py`, which build the front end with kapre 0.1.4, the version the weights were trained
with; openl3 0.4 keeps n_dft / n_hop / n_mels and kapre 0.1.4's dB scaling but moves to kapre
0.3 layers that pad only at the end, `pad_end=True`; we follow the training-time layers):
  - audio is resampled to 48 kHz (`TARGET_SR`; the original uses resampy kaiser_best, we use
    soxr), cut into 1 s windows (`frame_len = TARGET_SR`) every `int(hop_size * TARGET_SR)`
    samples. `center=True` prepends half a window of zeros (`_center_audio`) so frame i is
    centred at i * hop; the end is zero-padded so every sample is covered and a clip shorter
    than a window gives one zero-padded window (`_pad_audio`, `_get_num_windows`).
  - mel256 / mel128: kapre `Melspectrogram(n_dft=2048, n_hop=242, n_mels=256|128, sr=48000,
    power_melgram=1.0, htk=True, return_decibel_melgram=True, padding='same')`: periodic Hann
    window (`get_stft_kernels`), DFT by strided correlation with TF 'same' padding (982 zeros
    each side of the 48000 samples -> 199 frames), power spectrum, librosa HTK mel filterbank
    with area normalisation (`norm=1`, fmin 0, fmax 24 kHz), then sqrt (power_melgram 1.0).
  - linear: kapre `Spectrogram(n_dft=512, n_hop=242, power_spectrogram=1.0,
    return_decibel_spectrogram=True, padding='valid')`: 257 bins x 197 frames of |STFT|.
  - dB (kapre 0.1.4 `amplitude_to_decibel`): 10 * log10(max(x, 1e-10)), minus the maximum of
    the same window, floored at -80 dB.
  - network (`_construct_<repr>_audio_network`): BatchNorm on the spectrogram; blocks of
    conv3x3('same') -> BN -> ReLU twice -> 2x2 max-pool (stride 2) with 64, 128, 256 channels;
    block 4 is conv3x3(512) -> BN -> ReLU -> conv3x3(512) `audio_embedding_layer` with no BN,
    ReLU or pool after it. Keras BatchNormalization defaults: epsilon 1e-3. Feature maps are
    (mels, frames): 256x199 -> 128x99 -> 64x49 -> 32x24.
  - embedding (`AUDIO_POOLING_SIZES`): MaxPooling2D(pool, padding='same') then Keras Flatten,
    which is channels-last, so the 6144 vector is ordered (mel, frame, channel).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mer.errors import MerError
from mer.hashing import sha256_file
from mer.extract.base import EXTRACTORS, ExtractItem, Extractor, FeatureSpec, with_options

INPUT_SAMPLE_RATE = 16000  # ExtractItem.audio
MODEL_SAMPLE_RATE = 48000  # openl3 core.py TARGET_SR
WINDOW_SAMPLES = MODEL_SAMPLE_RATE  # 1 s windows: core.py frame_len = TARGET_SR
WEIGHTS_ENV = "MER_OPENL3_WEIGHTS"
WEIGHT_SUFFIXES = (".safetensors", ".pt")
INPUT_REPRS = ("mel256", "mel128", "linear")
CONTENT_TYPES = ("env", "music")
EMBEDDING_SIZES = (512, 6144)
POOLS = ("none", "mean")
RESAMPLE_QUALITIES = ("HQ", "VHQ")

DB_AMIN = 1e-10  # kapre 0.1.4 amplitude_to_decibel(amin=1e-10)
DB_DYNAMIC_RANGE = 80.0  # kapre 0.1.4 amplitude_to_decibel(dynamic_range=80.0)
BN_EPS = 1e-3  # Keras BatchNormalization default epsilon
BLOCK_CHANNELS = (64, 128, 256, 512)  # models.py n_filter_a_1 .. n_filter_a_4
POOLED_CONVS = (1, 3, 5)  # 2x2 max-pool after the second conv of blocks 1-3 (0-based conv index)
HTK_MEL_SCALE, HTK_MEL_BREAK_HZ = 2595.0, 700.0  # mel = 2595 log10(1 + f / 700)

# models.py AUDIO_POOLING_SIZES: (mels, frames) of the final max-pool per embedding size
AUDIO_POOLING_SIZES = {
    "linear": {6144: (8, 8), 512: (32, 24)},
    "mel128": {6144: (4, 8), 512: (16, 24)},
    "mel256": {6144: (8, 8), 512: (32, 24)},
}


class OpenL3Error(MerError):
    """Bad OpenL3 options, or weights that are missing or do not fit."""


@dataclass(frozen=True)
class FrontEnd:
    """One kapre 0.1.4 spectrogram layer as openl3 models.py configures it."""

    n_fft: int  # n_dft: also the periodic Hann window length
    hop_length: int  # n_hop
    n_mels: Optional[int]  # None: linear |STFT| (Spectrogram), else Melspectrogram(htk=True)
    same_padding: bool  # TF padding='same' (mel) or 'valid' (linear)

    @property
    def padding(self) -> tuple[int, int]:
        """TF 'same' padding of a strided correlation over one window: (left, right) zeros."""
        if not self.same_padding:
            return 0, 0
        frames = math.ceil(WINDOW_SAMPLES / self.hop_length)
        total = max((frames - 1) * self.hop_length + self.n_fft - WINDOW_SAMPLES, 0)
        return total // 2, total - total // 2


FRONT_ENDS = {
    "mel256": FrontEnd(n_fft=2048, hop_length=242, n_mels=256, same_padding=True),
    "mel128": FrontEnd(n_fft=2048, hop_length=242, n_mels=128, same_padding=True),
    "linear": FrontEnd(n_fft=512, hop_length=242, n_mels=None, same_padding=False),
}


@dataclass(frozen=True)
class OpenL3Config:
    """Every option of the OpenL3 family; the registered names fix embedding_size (and pool)."""

    embedding_size: int = 6144
    content_type: str = "env"
    input_repr: str = "mel256"
    weights: Optional[str] = None  # file or folder; None: $MER_OPENL3_WEIGHTS
    hop_seconds: float = 0.1  # openl3 hop_size
    center: bool = True  # openl3 center: frame i is centred at i * hop
    pool: str = "none"  # "none": one row per window; "mean": one vector per utterance
    resample_quality: str = "HQ"  # soxr quality for 16 kHz -> 48 kHz
    window_batch: int = 32  # windows per forward pass (memory only; not in the cache key)

    def __post_init__(self):
        checks = {
            f"embedding_size must be one of {EMBEDDING_SIZES}": self.embedding_size in EMBEDDING_SIZES,
            f"content_type must be one of {CONTENT_TYPES}": self.content_type in CONTENT_TYPES,
            f"input_repr must be one of {INPUT_REPRS}": self.input_repr in INPUT_REPRS,
            f"pool must be one of {POOLS}": self.pool in POOLS,
            f"resample_quality must be one of {RESAMPLE_QUALITIES}": self.resample_quality in RESAMPLE_QUALITIES,
            "hop_seconds must give at least one 48 kHz sample": self.hop_seconds > 0 and self.hop_samples >= 1,
            "window_batch must be >= 1": self.window_batch >= 1,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise OpenL3Error(f"openl3 options: {'; '.join(failed)}")

    @property
    def hop_samples(self) -> int:
        return int(self.hop_seconds * MODEL_SAMPLE_RATE)  # core.py: int(hop_size * TARGET_SR)

    @property
    def frame_rate(self) -> float:
        return MODEL_SAMPLE_RATE / self.hop_samples

    @property
    def weight_file_stem(self) -> str:
        return f"openl3_audio_{self.input_repr}_{self.content_type}"  # the official .h5 names

    def num_windows(self, n_samples: int) -> int:
        """Windows for n_samples at 48 kHz: openl3 core.py _get_num_windows."""
        padded = n_samples + (WINDOW_SAMPLES // 2 if self.center else 0)
        return 1 if padded <= WINDOW_SAMPLES else 1 + math.ceil((padded - WINDOW_SAMPLES) / self.hop_samples)

    def to_spec_config(self, weights_sha256: str) -> dict:
        config = {k: v for k, v in asdict(self).items() if k not in ("weights", "window_batch")}
        return {**config, "hop_samples": self.hop_samples, "weights_sha256": weights_sha256}


# ----------------------------------------------------------------------------- front end


def htk_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1): librosa.filters.mel(htk=True, norm=1 (area), fmin=0, fmax=sr/2),
    the matrix kapre 0.1.4 Melspectrogram builds."""
    def hz_to_mel(hz):
        return HTK_MEL_SCALE * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / HTK_MEL_BREAK_HZ)

    def mel_to_hz(mel):
        return HTK_MEL_BREAK_HZ * (10.0 ** (np.asarray(mel, dtype=np.float64) / HTK_MEL_SCALE) - 1.0)

    fft_hz = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)  # (n_freqs,)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))  # (n_mels + 2,)
    ramps = edges_hz[:, None] - fft_hz[None, :]  # (n_mels + 2, n_freqs)
    widths = np.diff(edges_hz)  # (n_mels + 1,)
    rising, falling = -ramps[:-2] / widths[:-1, None], ramps[2:] / widths[1:, None]  # (n_mels, n_freqs)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]  # area normalisation
    return weights.astype(np.float32)


def amplitude_to_decibel(x: torch.Tensor) -> torch.Tensor:
    """kapre 0.1.4: 10 log10(max(x, amin)) relative to each item's own maximum, floored at -80 dB."""
    db = 10.0 * torch.log10(torch.clamp(x, min=DB_AMIN))  # (batch, bins, frames)
    db = db - db.amax(dim=(1, 2), keepdim=True)
    return torch.clamp(db, min=-DB_DYNAMIC_RANGE)


class Spectrogram(nn.Module):
    """1 s windows -> normalised dB spectrogram, as the kapre layer of the original model."""

    def __init__(self, front: FrontEnd):
        super().__init__()
        self.front = front
        self.register_buffer("window", torch.hann_window(front.n_fft, periodic=True), persistent=False)
        mel = htk_mel_filterbank(MODEL_SAMPLE_RATE, front.n_fft, front.n_mels) if front.n_mels else np.zeros((0, 0))
        self.register_buffer("mel_basis", torch.from_numpy(mel).float(), persistent=False)  # (n_mels, n_freqs)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """(batch, 48000) -> (batch, 1, bins, frames)."""
        front = self.front
        windows = F.pad(windows, front.padding)  # (batch, samples + padding)
        stft = torch.stft(windows, n_fft=front.n_fft, hop_length=front.hop_length, window=self.window,
                          center=False, return_complex=True)  # (batch, n_freqs, frames)
        power = stft.real ** 2 + stft.imag ** 2
        if front.n_mels:
            power = torch.matmul(self.mel_basis, power)  # (batch, n_mels, frames)
        return amplitude_to_decibel(power.sqrt()).unsqueeze(1)  # power_melgram / power_spectrogram = 1.0


# ----------------------------------------------------------------------------- network


class L3AudioNet(nn.Module):
    """The L3-Net audio subnetwork with the openl3 embedding pool. State-dict keys:
    input_norm.*, convs.{0..7}.{weight,bias}, norms.{0..6}.* (conv k is followed by norms[k]
    except the last conv, the Keras `audio_embedding_layer`)."""

    def __init__(self, input_repr: str = "mel256", embedding_size: int = 6144):
        super().__init__()
        self.spectrogram = Spectrogram(FRONT_ENDS[input_repr])
        self.input_norm = nn.BatchNorm2d(1, eps=BN_EPS)
        widths = [1] + [channels for channels in BLOCK_CHANNELS for _ in range(2)]  # 1, 64, 64, 128, ..., 512
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, padding=1) for c_in, c_out in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels, eps=BN_EPS) for channels in widths[1:-1])
        self.pool_size = AUDIO_POOLING_SIZES[input_repr][embedding_size]

    def keras_order(self) -> list[nn.Module]:
        """The layers that carry weights, in the Keras model's order: BN, conv, BN, conv, ..., conv."""
        ordered: list[nn.Module] = [self.input_norm]
        for index, conv in enumerate(self.convs):
            ordered += [conv] + ([self.norms[index]] if index < len(self.norms) else [])
        return ordered

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """(batch, 48000) -> (batch, embedding_size)."""
        x = self.input_norm(self.spectrogram(windows))  # (batch, 1, bins, frames)
        for index, conv in enumerate(self.convs):
            x = conv(x)
            if index < len(self.norms):
                x = F.relu(self.norms[index](x))
            if index in POOLED_CONVS:
                x = F.max_pool2d(x, 2)  # Keras MaxPooling2D((2, 2), strides=2), 'valid'
        # Keras MaxPooling2D(pool, padding='same'): pools tile the map exactly for every repr/size
        x = F.max_pool2d(x, self.pool_size, ceil_mode=True)  # (batch, 512, h, w)
        return x.permute(0, 2, 3, 1).flatten(1)  # Keras Flatten is channels-last: (h, w, channels)


# ----------------------------------------------------------------------------- weights


def resolve_weights(config: OpenL3Config) -> Path:
    """The converted weights file named by `weights=` or $MER_OPENL3_WEIGHTS; one-line error otherwise."""
    option, given = "weights=", config.weights
    if not given:
        option, given = f"${WEIGHTS_ENV}=", os.environ.get(WEIGHTS_ENV)
    names = [config.weight_file_stem + suffix for suffix in WEIGHT_SUFFIXES]
    fix = (f"pass weights=PATH or set ${WEIGHTS_ENV} to a converted weights file or a folder holding {names[0]}; "
           f"convert the official {config.weight_file_stem}.h5 with "
           "python -m mer.extract.openl3_convert (docs/openl3.md)")
    if not given:
        raise OpenL3Error(f"openl3: no weights given; {fix}")
    path = Path(given).expanduser()
    if path.is_dir():
        found = [path / name for name in names if (path / name).is_file()]
        if not found:
            raise OpenL3Error(f"{path} ({option}): no {' or '.join(names)} in this folder; {fix}")
        return found[0]
    if not path.is_file():
        raise OpenL3Error(f"{path} ({option}): OpenL3 weights not found; {fix}")
    return path


def file_sha256(path: Path) -> str:
    return sha256_file(path)


def save_weights(state_dict: dict, path: Path, metadata: dict) -> None:
    """Write a state_dict as .safetensors (with metadata) or .pt ({"state_dict", "metadata"}), atomically."""
    path = Path(path)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise OpenL3Error(f"{path}: weights must end in {' or '.join(WEIGHT_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tensors = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in metadata.items()})
    else:
        torch.save({"state_dict": tensors, "metadata": dict(metadata)}, tmp)
    os.replace(tmp, path)


def read_weights(path: Path) -> tuple[dict, dict]:
    """(state_dict, metadata) from a file written by save_weights, or a bare torch state_dict."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return {key: f.get_tensor(key) for key in f.keys()}, dict(f.metadata() or {})
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: one line with the cause
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OpenL3Error(f"{path}: cannot read OpenL3 weights ({reason}); re-run mer.extract.openl3_convert") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        return loaded["state_dict"], dict(loaded.get("metadata") or {})
    if isinstance(loaded, dict):
        return loaded, {}
    raise OpenL3Error(f"{path}: not a state_dict; re-run mer.extract.openl3_convert")


def check_metadata(path: Path, metadata: dict, config: OpenL3Config) -> None:
    """Converted files record the official file's repr and content type; refuse a mismatch."""
    for key in ("input_repr", "content_type"):
        recorded = metadata.get(key)
        if recorded and recorded != getattr(config, key):
            raise OpenL3Error(f"{path}: converted from {metadata.get('source', 'a file')} with {key}={recorded}, "
                              f"but the options ask for {key}={getattr(config, key)}; pass the matching weights=")


def build_network(path: Path, config: OpenL3Config) -> L3AudioNet:
    state_dict, metadata = read_weights(path)
    check_metadata(path, metadata, config)
    network = L3AudioNet(config.input_repr, config.embedding_size)
    missing, unexpected = network.load_state_dict(state_dict, strict=False)
    shapes = {key: tuple(value.shape) for key, value in network.state_dict().items()}
    wrong = [key for key, value in state_dict.items() if key in shapes and tuple(value.shape) != shapes[key]]
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                           if keys)
        raise OpenL3Error(f"{path}: not OpenL3 audio weights ({detail}); re-run mer.extract.openl3_convert")
    return network.eval()


# ----------------------------------------------------------------------------- the extractor


class OpenL3Extractor(Extractor):
    """OpenL3 embeddings of every window of each clip (or their mean), on the device given to `load`."""

    def __init__(self, name: str, config: OpenL3Config):
        self.config = config
        self.weights_path = resolve_weights(config)
        self.weights_sha256 = file_sha256(self.weights_path)
        frame = config.pool == "none"
        self.spec = FeatureSpec(name=name, modality="audio", granularity="frame" if frame else "utterance",
                                dim=config.embedding_size, frame_rate=config.frame_rate if frame else None,
                                dtype="float16", config=config.to_spec_config(self.weights_sha256),
                                model_id=str(self.weights_path), model_revision=f"sha256:{self.weights_sha256}")
        self._network: Optional[L3AudioNet] = None
        self._device: Optional[torch.device] = None

    def load(self, device: str = "cpu") -> None:
        path = resolve_weights(self.config)
        if file_sha256(path) != self.weights_sha256:
            raise OpenL3Error(f"{path}: the weights changed since this extractor was created; start again")
        self._device = torch.device(device)
        # channels-last convolutions: same values (to float rounding), faster on CPU and GPU
        self._network = build_network(path, self.config).to(self._device, memory_format=torch.channels_last)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_network": None, "_device": None}  # each process loads its own

    @torch.inference_mode()
    def extract(self, items: list[ExtractItem]) -> list[np.ndarray]:
        if self._network is None:
            self.load("cpu")
        if not items:
            return []
        framed = [self._framed(item) for item in items]  # each (windows, 48000), a view
        embeddings = torch.cat([self._network(chunk) for chunk in self._chunks(framed)])  # (all windows, dim)
        per_item = torch.split(embeddings.float().cpu(), [len(windows) for windows in framed])
        if self.config.pool == "mean":
            return [rows.mean(dim=0).numpy() for rows in per_item]
        return [rows.numpy().copy() for rows in per_item]

    def _framed(self, item: ExtractItem) -> torch.Tensor:
        """One clip -> (windows, 48000): resampled, centred and padded like openl3 core.py."""
        cfg = self.config
        wave = self._resampled(item)  # (samples at 48 kHz,)
        lead = WINDOW_SAMPLES // 2 if cfg.center else 0
        total = (cfg.num_windows(len(wave)) - 1) * cfg.hop_samples + WINDOW_SAMPLES
        padded = torch.zeros(total, dtype=torch.float32, device=self._device)
        padded[lead: lead + len(wave)] = torch.from_numpy(wave).to(self._device)
        return padded.unfold(0, WINDOW_SAMPLES, cfg.hop_samples)  # (windows, 48000)

    def _resampled(self, item: ExtractItem) -> np.ndarray:
        import soxr

        wave = item.audio
        if wave is None or wave.ndim != 1 or wave.size == 0:
            raise OpenL3Error(f"{item.utterance.id}: {self.spec.name} needs non-empty mono audio (1-D), got "
                              f"{None if wave is None else wave.shape}; decode it with mer.data.audio.load_audio")
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        return soxr.resample(wave, INPUT_SAMPLE_RATE, MODEL_SAMPLE_RATE, quality=self.config.resample_quality)

    def _chunks(self, framed: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The windows of all clips in order, window_batch at a time: (<= window_batch, 48000)."""
        windows = (window for clip in framed for window in clip)  # (48000,) views
        while batch := list(islice(windows, self.config.window_batch)):
            yield torch.stack(batch)


# ----------------------------------------------------------------------------- registration


PRESETS = {
    "openl3-512": OpenL3Config(embedding_size=512),
    "openl3-6144": OpenL3Config(embedding_size=6144),
    "openl3-512-mean": OpenL3Config(embedding_size=512, pool="mean"),
    "openl3-6144-mean": OpenL3Config(embedding_size=6144, pool="mean"),
}


def build_openl3(name: str, preset: OpenL3Config, **options) -> OpenL3Extractor:
    # the embedding size is part of the name
    return OpenL3Extractor(name, with_options(name, preset, options, OpenL3Error, ("embedding_size",)))


for _name, _preset in PRESETS.items():
    EXTRACTORS.register(_name)(partial(build_openl3, _name, _preset))
