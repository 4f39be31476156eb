"""emotion2vec features (Ma et al., 2023; emotion2vec+ 2024): the data2vec 2.0 audio encoder in
PyTorch, with weights converted from the released checkpoints (`python -m mer.extract.emotion2vec_convert`,
or on first use).

Registered names:

    emotion2vec-base            emotion2vec/emotion2vec_base          frame, 50 frames/s, 768
    emotion2vec-plus-base       emotion2vec/emotion2vec_plus_base     frame, 768
    emotion2vec-plus-large      emotion2vec/emotion2vec_plus_large    frame, 1024
    emotion2vec-*-mean          the same, utterance level: the mean of the frames

What the release calls features (FunASR `Emotion2vec.inference`, emotion2vec `extract_features.py`):
the waveform normalised over the whole clip (`F.layer_norm(source, source.shape)` when the config
says `normalize`), one forward pass without masking, the output of the last transformer block (plus
the final norm on pre-norm configs) with the extra tokens removed: granularity="frame". The
utterance feature (granularity="utterance") is the mean of those frames. These are what we store.

Options: model (a checkpoint directory or hub id replacing the registered one), models_dir (as
$MER_MODELS_DIR: DIR/<hub id's last part>), revision, pool=none|mean, dtype=fp32|fp16|bf16,
chunk_seconds (30) and chunk_overlap_seconds (1.5) as the SSL encoders.

A checkpoint directory is either the release's own (`model.pt` + `config.yaml`, as FunASR and the hub
hold it) or one written by the converter (`config.json` + `model.safetensors`). A release directory
is converted once into $MER_HOME/emotion2vec/<its hash>/ (the state dict is read with
`torch.load(weights_only=True)`; a checkpoint that needs pickle must be converted by hand with
--allow-pickle). The revision in the cache key is the sha256 of the converted weights, so the same
weights from the hub, a release folder or a converted folder share one cache entry.

The network (FunASR funasr/models/emotion2vec: model.py, audio.py, base.py, modules.py):
  feature encoder   7 convs (512 x (10,5), 4 x (3,2), 2 x (2,2)), no bias, each followed by a
                    LayerNorm over channels and GELU (`extractor_mode: layer_norm`): 320 samples a frame,
                    receptive field 400: a clip of n samples has 1 + (n - 400) // 320 frames
  projection        LayerNorm(512) -> Linear(512, D)
  positional conv   conv_pos_depth x [Conv1d(D, D, k, padding k // 2, groups) -> LayerNorm without
                    affine -> GELU], k = max(3, conv_pos_width // conv_pos_depth), added to the input
  extra tokens      num_extra_tokens learned vectors in front of the frames (removed at the end)
  ALiBi             attention bias -slope_h |i - j| between frames (0 for the extra tokens), scaled by
                    the learned, non-negative alibi_scale (per head; per layer when the config says so)
  blocks            prenet_depth blocks of the audio encoder (after a LayerNorm on post-norm configs),
                    then depth blocks; each fairseq's AltBlock: attention with a qkv bias, MLP with GELU
Batching: clips are zero-padded; the feature encoder is frame-local, the positional convolution sees
zeros beyond each clip's end (as on the clip alone) and attention masks the padded frames, so a
clip's features do not depend on its batch (tests/test_emotion2vec.py).
Long clips: longer than chunk_seconds, they run in overlapping windows on the frame grid as the SSL
encoders do (mer/extract/ssl.py plan_chunks); the positional convolution reaches 0.9 s each side,
inside the 1.5 s overlap. Attention then sees one window: the release runs the whole clip at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mer.errors import MerError
from mer.extract.base import ExtractItem, Extractor, FeatureSpec, check_all, check_options, register_checkpoints
from mer.extract.pretrained import MODELS_DIR_ENV, ModelNotAvailable, _from_hub, hash_local_weights, local_copy_hint
from mer.extract.ssl import COMPUTE_DTYPES, SAMPLE_RATE, ConvGeometry, compute_dtype, plan_chunks

CHECKPOINTS = {
    "emotion2vec-base": "emotion2vec/emotion2vec_base",
    "emotion2vec-plus-base": "emotion2vec/emotion2vec_plus_base",
    "emotion2vec-plus-large": "emotion2vec/emotion2vec_plus_large",
}
MODEL_TYPE = "emotion2vec"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"  # a converted directory
RELEASE_CONFIG, RELEASE_WEIGHTS = "config.yaml", "model.pt"  # the release's (FunASR / hub) directory
POOLS = ("none", "mean")
RELEASE_FEATURE_ENCODER = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


class Emotion2vecError(MerError):
    """Bad emotion2vec options, or a checkpoint that is missing or does not fit."""


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Emotion2vecConfig:
    """The architecture; defaults are emotion2vec base's (FunASR template.yaml)."""

    embed_dim: int = 768
    num_heads: int = 12
    depth: int = 8  # blocks after the audio encoder's own
    prenet_depth: int = 4  # the audio encoder's blocks (context_encoder)
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-5
    norm_affine: bool = True
    layer_norm_first: bool = False  # pre-norm blocks
    num_extra_tokens: int = 10
    feature_encoder_spec: tuple = RELEASE_FEATURE_ENCODER  # (channels, kernel, stride) per conv
    conv_pos_width: int = 95
    conv_pos_groups: int = 16
    conv_pos_depth: int = 5
    conv_pos_pre_ln: bool = False
    use_alibi: bool = True
    alibi_scale_per_head: bool = True
    alibi_scale_per_layer: bool = False
    normalize: bool = True  # layer-norm the waveform over the whole clip

    def __post_init__(self):
        object.__setattr__(self, "feature_encoder_spec", tuple(tuple(layer) for layer in self.feature_encoder_spec))

    @property
    def conv_pos_kernel(self) -> int:
        return max(3, self.conv_pos_width // self.conv_pos_depth)

    @property
    def alibi_scale_shape(self) -> tuple:
        layers = self.prenet_depth + self.depth if self.alibi_scale_per_layer else 1
        return (layers, 1, self.num_heads if self.alibi_scale_per_head else 1, 1, 1)

    @property
    def geometry(self) -> ConvGeometry:
        return ConvGeometry.from_config(SimpleNamespace(conv_kernel=[k for _, k, _ in self.feature_encoder_spec],
                                                        conv_stride=[s for _, _, s in self.feature_encoder_spec]))

    def to_json(self) -> str:
        return json.dumps({"model_type": MODEL_TYPE, **asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, path: Path) -> "Emotion2vecConfig":
        data = json.loads(Path(path).read_text())
        if data.pop("model_type", None) != MODEL_TYPE:
            raise Emotion2vecError(f"{path}: not an emotion2vec config (model_type != {MODEL_TYPE!r}); convert the "
                                   f"release with python -m mer.extract.emotion2vec_convert")
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


# ----------------------------------------------------------------------------- network


def layer_norm(config: Emotion2vecConfig, dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=config.norm_eps, elementwise_affine=config.norm_affine)


class FeatureEncoder(nn.Module):
    """Waveform -> frames: strided convs, each with a LayerNorm over channels (fp32) and GELU."""

    def __init__(self, spec: tuple):
        super().__init__()
        channels = [1] + [dim for dim, _, _ in spec]
        self.convs = nn.ModuleList(nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=False)
                                   for c_in, (c_out, kernel, stride) in zip(channels, spec))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for dim, _, _ in spec)

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, frames, channels)."""
        x = samples[:, None]  # (batch, 1, samples)
        for conv, norm in zip(self.convs, self.norms):
            x = conv(x)  # (batch, channels, frames)
            x = F.layer_norm(x.transpose(1, 2).float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(),
                             norm.eps).to(x.dtype).transpose(1, 2)
            x = F.gelu(x)
        return x.transpose(1, 2)


class FeatureProjection(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(features))


class PositionalEncoder(nn.Module):
    """Stacked grouped convolutions over time; the output is added to the frames."""

    def __init__(self, config: Emotion2vecConfig):
        super().__init__()
        dim, kernel = config.embed_dim, config.conv_pos_kernel
        self.pre_norm = nn.LayerNorm(dim) if config.conv_pos_pre_ln else None
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=config.conv_pos_groups)
                                   for _ in range(config.conv_pos_depth))
        self.trim = 1 if kernel % 2 == 0 else 0  # fairseq SamePad

    def forward(self, frames: torch.Tensor, padding: Optional[torch.Tensor]) -> torch.Tensor:
        """frames (batch, T, dim), padding (batch, T) True past each clip's end -> (batch, T, dim)."""
        x = self.pre_norm(frames) if self.pre_norm is not None else frames
        for conv in self.convs:
            if padding is not None:  # what the conv's own zero padding gives on the clip alone
                x = x.masked_fill(padding[..., None], 0.0)
            x = conv(x.transpose(1, 2))  # (batch, dim, T + trim)
            x = x[..., : x.shape[-1] - self.trim].transpose(1, 2)
            x = F.gelu(F.layer_norm(x, x.shape[-1:]))
        return x


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """x (batch, L, dim); bias (batch or 1, heads, L, L) added to the logits (-inf masks a key)."""
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]  # each (batch, heads, L, head_dim)
        if bias is not None:
            bias = bias.to(query.dtype)
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        return self.proj(attended.transpose(1, 2).reshape(batch, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """fairseq's data2vec 2.0 AltBlock in eval mode."""

    def __init__(self, config: Emotion2vecConfig):
        super().__init__()
        dim = config.embed_dim
        self.layer_norm_first = config.layer_norm_first
        self.norm1 = layer_norm(config, dim)
        self.attn = Attention(dim, config.num_heads)
        self.norm2 = layer_norm(config, dim)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))

    def forward(self, x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.attn(self.norm1(x), bias)
            mlp_out = self.mlp(self.norm2(x))
            return mlp_out + mlp_out  # as fairseq's AltBlock: `r = x = mlp(...); x = r + x`, no residual
        x = self.norm1(x + self.attn(x, bias))
        return self.norm2(x + self.mlp(x))


def alibi_slopes(num_heads: int) -> list[float]:
    """fairseq get_alibi's per-head slopes (geometric; interleaved for a head count not a power of 2)."""
    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_2(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


def alibi_bias(num_heads: int, frames: int, extra_tokens: int) -> torch.Tensor:
    """(1, heads, E + T, E + T): -slope |i - j| between frames, 0 wherever an extra token is involved."""
    positions = torch.arange(frames)
    distance = -(positions[None, :] - positions[:, None]).abs().float()  # (T, T)
    bias = torch.tensor(alibi_slopes(num_heads))[:, None, None] * distance  # (heads, T, T)
    return F.pad(bias, (extra_tokens, 0, extra_tokens, 0))[None]


class Emotion2vecModel(nn.Module):
    """The emotion2vec (data2vec 2.0 audio) encoder; forward gives the release's frame features."""

    def __init__(self, config: Emotion2vecConfig):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.feature_encoder = FeatureEncoder(config.feature_encoder_spec)
        self.feature_projection = FeatureProjection(config.feature_encoder_spec[-1][0], dim)
        self.positional_encoder = PositionalEncoder(config)
        self.extra_tokens = nn.Parameter(torch.zeros(1, config.num_extra_tokens, dim))
        self.alibi_scale = nn.Parameter(torch.ones(config.alibi_scale_shape)) if config.use_alibi else None
        self.prenet_norm = None if config.layer_norm_first else layer_norm(config, dim)
        self.prenet_blocks = nn.ModuleList(Block(config) for _ in range(config.prenet_depth))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.final_norm = layer_norm(config, dim) if config.layer_norm_first else None

    def forward(self, samples: torch.Tensor, frame_lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """samples (batch, samples), zero padded; frame_lengths (batch,) -> (batch, frames, dim)."""
        x = self.feature_projection(self.feature_encoder(samples))  # (batch, T, dim)
        batch, frames, _ = x.shape
        padding = None
        if frame_lengths is not None and int(frame_lengths.min()) < frames:
            padding = torch.arange(frames, device=x.device)[None] >= frame_lengths[:, None].to(x.device)  # (batch, T)
        x = x + self.positional_encoder(x, padding)
        extra = self.config.num_extra_tokens
        x = torch.cat([self.extra_tokens.expand(batch, -1, -1), x], dim=1)  # (batch, E + T, dim)
        key_mask = self._key_mask(padding, extra, x)  # (batch, 1, 1, E + T) or None
        position_bias = alibi_bias(self.config.num_heads, frames, extra).to(x.device) if self.alibi_scale is not None else None
        if self.prenet_norm is not None:
            x = self.prenet_norm(x)
        for index, block in enumerate([*self.prenet_blocks, *self.blocks]):
            x = block(x, self._block_bias(index, position_bias, key_mask))
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x[:, extra:]

    @staticmethod
    def _key_mask(padding: Optional[torch.Tensor], extra: int, x: torch.Tensor) -> Optional[torch.Tensor]:
        if padding is None:
            return None
        padded_keys = F.pad(padding, (extra, 0), value=False)  # (batch, E + T)
        return torch.zeros(padded_keys.shape, device=x.device).masked_fill(padded_keys, float("-inf"))[:, None, None]

    def _block_bias(self, index: int, position_bias: Optional[torch.Tensor],
                    key_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """ALiBi scaled for block `index` (counting the prenet's blocks first) plus the key mask."""
        bias = None
        if position_bias is not None:
            scales = self.alibi_scale.clamp_min(0)  # (layers or 1, 1, heads or 1, 1, 1)
            bias = position_bias * scales[index if scales.shape[0] > 1 else 0]
        if key_mask is not None:
            bias = key_mask if bias is None else bias + key_mask
        return bias


# ----------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Checkpoint:
    model_id: str  # what the user named
    directory: Path  # converted: config.json + model.safetensors
    revision: str  # "sha256:" of the converted weights


def resolve_checkpoint(model: str, revision: Optional[str] = None, models_dir: Optional[str] = None,
                       feature: str = "") -> Checkpoint:
    """A converted or release directory (given, in models_dir / $MER_MODELS_DIR, in the HF cache or on
    the hub); release directories are converted once into $MER_HOME/emotion2vec/. `feature` names the
    extractor in the hint."""
    directory = _find_local(model, models_dir)
    if directory is None:
        hint = local_copy_hint(model, feature, f"{RELEASE_WEIGHTS} + {RELEASE_CONFIG}, or what "
                                               "python -m mer.extract.emotion2vec_convert writes")
        directory = _from_hub(model, revision, hint, patterns=(RELEASE_CONFIG, RELEASE_WEIGHTS, "*.json",
                                                                "*.safetensors")).local_dir
    converted = directory if (directory / CONFIG_FILE).is_file() else _converted_copy(directory)
    return Checkpoint(model, converted, "sha256:" + _weights_digest(converted))


def _weights_digest(directory: Path) -> str:
    """The converter's content digest from the weights' metadata; a hash of the files otherwise."""
    from safetensors import safe_open

    with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as weights:
        recorded = (weights.metadata() or {}).get("weights_sha256")
    return recorded or hash_local_weights(directory)


def _find_local(model: str, models_dir: Optional[str]) -> Optional[Path]:
    candidate = Path(model).expanduser()
    if candidate.is_dir():
        return _checked_directory(candidate)
    if model.startswith(("/", "./", "../", "~")):
        raise ModelNotAvailable(f"{model}: emotion2vec checkpoint directory not found; check the path")
    for root in (models_dir, os.environ.get(MODELS_DIR_ENV)):
        for sub in (model, model.split("/")[-1]) if root else ():
            path = Path(root).expanduser() / sub
            if path.is_dir():
                return _checked_directory(path)
    return None


def _checked_directory(directory: Path) -> Path:
    converted = (directory / CONFIG_FILE).is_file() and (directory / WEIGHTS_FILE).is_file()
    release = (directory / RELEASE_CONFIG).is_file() and (directory / RELEASE_WEIGHTS).is_file()
    if not (converted or release):
        raise ModelNotAvailable(f"{directory}: neither {RELEASE_WEIGHTS} + {RELEASE_CONFIG} (the release) nor "
                                f"{CONFIG_FILE} + {WEIGHTS_FILE} (converted) in this folder")
    return directory.resolve()


def _converted_copy(release_dir: Path) -> Path:
    """$MER_HOME/emotion2vec/<hash of the release files>/, converted on first use."""
    from mer.extract.emotion2vec_convert import convert

    digest = hashlib.sha256()
    for name in (RELEASE_CONFIG, RELEASE_WEIGHTS):
        stat = (release_dir / name).stat()
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}:{release_dir}".encode())
    home = Path(os.environ.get("MER_HOME", "~/.cache/mer")).expanduser()
    target = home / "emotion2vec" / digest.hexdigest()[:16]
    if not (target / WEIGHTS_FILE).is_file():
        convert(release_dir, target)
    return target


def build_network(directory: Path) -> Emotion2vecModel:
    from safetensors.torch import load_file

    network = Emotion2vecModel(Emotion2vecConfig.from_json(directory / CONFIG_FILE))
    missing, unexpected = network.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=False)
    if missing or unexpected:
        raise Emotion2vecError(f"{directory}: weights do not fit the config (missing: {missing[:3]}, unexpected: "
                               f"{unexpected[:3]}); convert again with python -m mer.extract.emotion2vec_convert")
    return network.eval()


# ----------------------------------------------------------------------------- the extractor


@dataclass(frozen=True)
class Emotion2vecOptions:
    model: Optional[str] = None
    models_dir: Optional[str] = None
    revision: Optional[str] = None
    pool: str = "none"
    dtype: str = "fp32"
    chunk_seconds: float = 30.0
    chunk_overlap_seconds: float = 1.5

    def __post_init__(self):
        checks = {
            f"pool must be one of {POOLS}, got {self.pool!r}": self.pool in POOLS,
            f"dtype must be one of {sorted(COMPUTE_DTYPES)}, got {self.dtype!r}": self.dtype in COMPUTE_DTYPES,
            "chunk_overlap_seconds must be >= 0": self.chunk_overlap_seconds >= 0,
            "chunk_seconds must exceed 2 x chunk_overlap_seconds": self.chunk_seconds > 2 * self.chunk_overlap_seconds,
        }
        check_all(checks, "emotion2vec options", Emotion2vecError)

    @classmethod
    def parse(cls, name: str, options: dict, **fixed) -> "Emotion2vecOptions":
        known = {f.name for f in fields(cls)} - set(fixed)
        check_options(name, options, known, Emotion2vecError)
        values = {**options, **fixed}
        try:
            for key in ("chunk_seconds", "chunk_overlap_seconds"):
                if key in values:
                    values[key] = float(values[key])
        except ValueError as exc:
            raise Emotion2vecError(f"{name}: {exc}") from None
        return cls(**{key: str(value).lower() if key in ("pool", "dtype") else value for key, value in values.items()})


class Emotion2vecExtractor(Extractor):
    """The release's frame features (last block, extra tokens removed), or their mean over the clip."""

    def __init__(self, name: str, model: str, options: Emotion2vecOptions):
        self.options = options
        self.checkpoint = resolve_checkpoint(model, options.revision, options.models_dir, name)
        self.model_config = Emotion2vecConfig.from_json(self.checkpoint.directory / CONFIG_FILE)
        self.geometry = self.model_config.geometry
        self._window_frames = self.geometry.frames(int(options.chunk_seconds * SAMPLE_RATE))
        self._overlap_frames = int(round(options.chunk_overlap_seconds * self.frame_rate))
        if self._window_frames - 2 * self._overlap_frames < 1:
            raise Emotion2vecError(f"{name}: chunk_seconds={options.chunk_seconds} leaves no frame between the overlaps")
        self.spec = self._spec(name)
        self._network: Optional[Emotion2vecModel] = None
        self._device: Optional[torch.device] = None

    @property
    def frame_rate(self) -> float:
        return SAMPLE_RATE / self.geometry.stride

    def _spec(self, name: str) -> FeatureSpec:
        options, frames = self.options, self.options.pool == "none"
        config = {"pool": options.pool, "sample_rate": SAMPLE_RATE, "normalize": self.model_config.normalize,
                  "compute_dtype": options.dtype, "chunk_seconds": options.chunk_seconds,
                  "chunk_overlap_seconds": options.chunk_overlap_seconds}
        return FeatureSpec(name=name, modality="audio", granularity="frame" if frames else "utterance",
                           dim=self.model_config.embed_dim, frame_rate=self.frame_rate if frames else None,
                           dtype="float16", config=config, model_id=self.checkpoint.model_id,
                           model_revision=self.checkpoint.revision)

    def load(self, device: str = "cpu") -> None:
        device = torch.device(device)
        dtype = compute_dtype(self.spec.name, self.options.dtype, device)
        self._network = build_network(self.checkpoint.directory).to(device=device, dtype=dtype)
        self._device = device

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_network": None, "_device": None}  # each process loads its own

    def frame_count(self, n_samples: int) -> int:
        return self.geometry.frames(n_samples)

    @torch.inference_mode()
    def extract(self, items: list[ExtractItem]) -> list[np.ndarray]:
        if self._network is None:
            self.load("cpu")
        waves = [self._model_input(item) for item in items]
        window_samples = int(self.options.chunk_seconds * SAMPLE_RATE)
        short = [i for i, wave in enumerate(waves) if len(wave) <= window_samples]
        frames: list[Optional[torch.Tensor]] = [None] * len(waves)
        for index, hidden in zip(short, self._encode([waves[i] for i in short])):
            frames[index] = hidden
        for index in sorted(set(range(len(waves))) - set(short)):
            frames[index] = self._encode_chunked(waves[index])
        return [self._as_output(hidden) for hidden in frames]

    def _model_input(self, item: ExtractItem) -> torch.Tensor:
        """The clip's samples, layer-normalised over the whole clip as the release does."""
        wave = item.audio
        if wave is None or wave.ndim != 1:
            raise Emotion2vecError(f"{item.utterance.id}: {self.spec.name} needs mono audio (1-D), got "
                                   f"{None if wave is None else wave.shape}; decode it with mer.data.audio.load_audio")
        if len(wave) < self.geometry.receptive_field:
            raise Emotion2vecError(f"{item.utterance.id}: {len(wave)} samples is shorter than one {self.spec.name} "
                                   f"frame ({self.geometry.receptive_field} samples)")
        samples = torch.from_numpy(np.asarray(wave, dtype=np.float32))
        return F.layer_norm(samples, samples.shape) if self.model_config.normalize else samples

    def _encode(self, waves: list[torch.Tensor]) -> list[torch.Tensor]:
        """One zero-padded batch -> each clip's (frames, dim), float32 on the CPU."""
        if not waves:
            return []
        lengths = [len(wave) for wave in waves]
        batch = torch.zeros(len(waves), max(lengths))  # (batch, samples)
        for row, wave in zip(batch, waves):
            row[: len(wave)] = wave
        frame_lengths = torch.tensor([self.geometry.frames(n) for n in lengths])
        hidden = self._network(batch.to(self._device, self._network.extra_tokens.dtype), frame_lengths)
        hidden = hidden.float().cpu()  # (batch, frames, dim)
        return [hidden[i, :n] for i, n in enumerate(frame_lengths.tolist())]

    def _encode_chunked(self, wave: torch.Tensor) -> torch.Tensor:
        """A long clip, window by window on the frame grid; joined frames = one-pass frames."""
        pieces = []
        for chunk in plan_chunks(self.frame_count(len(wave)), self._window_frames, self._overlap_frames, self.geometry):
            (hidden,) = self._encode([wave[chunk.start : chunk.stop]])
            pieces.append(hidden[chunk.keep_from : chunk.keep_to])
        return torch.cat(pieces)  # (frames, dim)

    def _as_output(self, frames: torch.Tensor) -> np.ndarray:
        return (frames.mean(dim=0) if self.options.pool == "mean" else frames).numpy().copy()


# ----------------------------------------------------------------------------- registration


def named_checkpoint(name: str, hub_id: str, options: dict, defaults: dict) -> Emotion2vecExtractor:
    parsed = Emotion2vecOptions.parse(name, options, **defaults)
    return Emotion2vecExtractor(name, parsed.model or hub_id, parsed)


register_checkpoints(CHECKPOINTS, named_checkpoint, Emotion2vecError)
