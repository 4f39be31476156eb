"""Self-supervised speech encoders through transformers: WavLM, wav2vec 2.0, HuBERT.

Registered names (one table, CHECKPOINTS; `feat_extract_norm` as the published configs set it):

    wavlm-base-plus     microsoft/wavlm-base-plus      group norm
    wavlm-base          microsoft/wavlm-base           group norm
    wavlm-large         microsoft/wavlm-large          layer norm
    wav2vec2-base       facebook/wav2vec2-base         group norm
    wav2vec2-large      facebook/wav2vec2-large-lv60   layer norm
    hubert-base-ls960   facebook/hubert-base-ls960     group norm
    hubert-large        facebook/hubert-large-ll60k    layer norm
    hf-audio:<hub id or local dir>   any transformers speech encoder with a CNN waveform front
                        end (AutoModel + AutoFeatureExtractor producing `input_values`)

The norm is always read from the checkpoint's config, never from this table. Note that
WavLM base / base-plus are GROUP norm checkpoints (`"feat_extract_norm": "group"`), even
though their feature extractor sets `return_attention_mask`.

Options (keyword arguments; strings from the command line are accepted), defaults in SslOptions:
    model          hub id or local directory replacing the registered one (hf-audio: the argument)
    models_dir     a folder with local copies (DIR/<name>/config.json), as $MER_MODELS_DIR
    revision       hub revision (branch, tag or commit)
    layers         `last` (default), `lastK` (e.g. `last4`), `all`, an int, or a comma list "3,6,9"
    chunk_seconds  clips longer than this run in windows of at most this length (default 30)
    chunk_overlap_seconds   extra context each side of a window's kept frames (default 1.5)
    dtype          compute dtype `fp32` | `fp16` | `bf16` (half precision only on CUDA)

Layer numbers (the same for every transformers version):
    0        the transformer's input: CNN features, feature projection, plus the convolutional
             positional embedding (and the encoder's input layer norm on post-norm "base"
             checkpoints): transformers' `hidden_states[0]`.
    1..N-1   the output of transformer layer i (`hidden_states[i]`); on pre-norm checkpoints
             (`do_stable_layer_norm`: the large / lv60 ones) the un-normalised residual stream.
    N        the model's `last_hidden_state`: layer N's output, plus the encoder's final layer
             norm on pre-norm checkpoints (transformers >= 5 returns `hidden_states[N]` WITHOUT
             that norm, 4.x with it; `last_hidden_state` is the same in both).

Output: (frames, dim) for one layer; with several layers (frames, layers, dim) in the order
asked, spec.inner_shape = (layers, dim): the cache stores and readers get (frames, layers, dim).
Frames: 50 per second (16000 / the CNN's total stride of 320 samples); an item of n samples
has `model._get_feat_extract_output_lengths(n)` frames, i.e. 1 + (n - 400) // 320 for the
registered checkpoints. Clips shorter than one CNN receptive field (400 samples = 25 ms) give
no frame and raise SslError naming the utterance (the runner records it as a failure).

Normalisation: the checkpoint's feature extractor (`do_normalize`: zero mean, unit variance)
is applied to each WHOLE utterance over its own samples, before any padding or chunking.

Batching (`pads_safely`, read by the runner): every item of a batch gets exactly its one-clip
result (tests/test_ssl.py: max |difference| 3.1e-6 in float32). A batch is zero-padded with an
attention_mask; each item's frames are cut to its own length.
  * layer-norm checkpoints (`feat_extract_norm == "layer"`): padding never reaches an item's
    frames (the CNN is local, the encoder zeroes padded frames and masks attention).
  * group-norm checkpoints (`"group"`): the first conv layer's GroupNorm normalises each channel
    over time, which on a padded batch would include the padding (DATASETS.md, "Feature
    facts"). While a padded batch runs, that GroupNorm's forward is replaced by one that runs
    `F.group_norm` on each item's own frames, which is what it computes on the item alone
    (one pass, no extra work over the padding); the rest of the model is as above. So these
    checkpoints batch like layer-norm ones.
  * a config without `feat_extract_norm` (other front ends): `pads_safely = False`; `extract`
    runs each group of identical-length items as one unpadded batch, the rest one by one.

Chunking: a clip longer than chunk_seconds is cut into windows of at most chunk_seconds that
start on the CNN's frame grid (multiples of its stride), so every window frame IS a one-pass
frame position and the joined output has exactly the one-pass frame count. Each window keeps
its core frames and sees chunk_overlap_seconds of extra context on each side; windows run one
at a time, so memory is bounded by one chunk_seconds window whatever the clip length (a 305 s
MELD clip runs as 12 windows). On group-norm checkpoints the first conv layer's GroupNorm
statistics are computed over the WHOLE clip first (that conv layer alone, block by block) and
used in every window (the same forward replacement), as a one-pass run would. So the
transformer's input (layer 0) equals the one-pass result wherever a frame's positional-convolution context (64
frames = 1.28 s each side for the registered checkpoints; hence the 1.5 s default overlap)
lies inside its window, i.e. everywhere with the default overlap. Transformer layers still differ a little, because
attention sees the window instead of the whole clip (tiny random models, a 7 s clip in 4 s
windows with the default overlap: layer 0 within 2.1e-6, transformer layers within 0.9 % of
max |value|; tests/test_ssl.py).
"""

from __future__ import annotations

import contextlib
import functools
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from mer.errors import MerError
from mer.extract.base import EXTRACTORS, ExtractItem, Extractor, FeatureSpec
from mer.extract.pretrained import resolve_pretrained, quiet_transformers

SAMPLE_RATE = 16000
COMPUTE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# The registered checkpoints: the only place their hub ids live.
CHECKPOINTS = {
    "wavlm-base-plus": "microsoft/wavlm-base-plus",
    "wavlm-base": "microsoft/wavlm-base",
    "wavlm-large": "microsoft/wavlm-large",
    "wav2vec2-base": "facebook/wav2vec2-base",
    "wav2vec2-large": "facebook/wav2vec2-large-lv60",
    "hubert-base-ls960": "facebook/hubert-base-ls960",
    "hubert-large": "facebook/hubert-large-ll60k",
}


class SslError(MerError):
    """Bad SSL encoder options, an unsupported checkpoint, or audio that gives no frame."""


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class SslOptions:
    """Every option of the SSL family; the ones that change values go into spec.config."""

    model: Optional[str] = None  # hub id or local dir; None: the registered checkpoint
    models_dir: Optional[str] = None  # folder with local copies, as $MER_MODELS_DIR
    revision: Optional[str] = None  # hub revision
    layers: Union[str, int, tuple, list] = "last"  # last | lastK | all | int | "3,6,9" | list of ints
    chunk_seconds: float = 30.0  # longer clips run in windows of at most this length
    chunk_overlap_seconds: float = 1.5  # context each side of a window's kept frames (> 1.28 s: see above)
    dtype: str = "fp32"  # compute dtype: fp32 | fp16 | bf16 (half only on CUDA)

    def __post_init__(self):
        checks = {
            f"dtype must be one of {sorted(COMPUTE_DTYPES)}, got {self.dtype!r}": self.dtype in COMPUTE_DTYPES,
            "chunk_overlap_seconds must be >= 0": self.chunk_overlap_seconds >= 0,
            "chunk_seconds must exceed 2 x chunk_overlap_seconds":
                self.chunk_seconds > 2 * self.chunk_overlap_seconds,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise SslError(f"ssl options: {'; '.join(failed)}")

    @classmethod
    def parse(cls, name: str, options: dict) -> "SslOptions":
        """Options as the CLI gives them (`chunk_seconds="10"`): unknown names fail, numbers are converted."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise SslError(f"{name}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = dict(options)
        try:
            for key in ("chunk_seconds", "chunk_overlap_seconds"):
                if key in values:
                    values[key] = float(values[key])
        except ValueError as exc:
            raise SslError(f"{name}: {exc}") from None
        if "dtype" in values:
            values["dtype"] = str(values["dtype"]).lower()
        return cls(**values)


def compute_dtype(name: str, dtype: str, device: torch.device) -> torch.dtype:
    """The torch dtype for `dtype=fp32|fp16|bf16`; half precision only on CUDA."""
    if dtype != "fp32" and device.type != "cuda":
        raise SslError(f"{name}: dtype={dtype} needs a CUDA device (got {device}); use dtype=fp32")
    return COMPUTE_DTYPES[dtype]


def parse_layers(value: Union[str, int, tuple, list], num_layers: int) -> tuple[int, ...]:
    """`last` -> (N,), `last4` -> (N-3..N), `all` -> (0..N), 6 / "6" -> (6,), "3,6,9" -> (3, 6, 9)."""
    text = str(value).strip().lower() if isinstance(value, str) else None
    if isinstance(value, (list, tuple)):
        picks = [int(v) for v in value]
    elif isinstance(value, int):
        picks = [value]
    elif text == "all":
        picks = list(range(num_layers + 1))
    elif text is not None and (match := re.fullmatch(r"last(\d*)", text)):
        count = int(match.group(1) or 1)
        picks = list(range(num_layers - count + 1, num_layers + 1))
    elif text is not None and re.fullmatch(r"\d+(\s*,\s*\d+)*", text):
        picks = [int(part) for part in text.split(",")]
    else:
        raise SslError(f"layers={value!r}: use last, lastK (e.g. last4), all, a number or a list like 3,6,9")
    if not picks or len(set(picks)) != len(picks) or not all(0 <= p <= num_layers for p in picks):
        raise SslError(f"layers={value!r}: layers must be distinct numbers between 0 (the transformer's "
                       f"input) and {num_layers} (the last of this model's {num_layers} layers)")
    return tuple(picks)


# ----------------------------------------------------------------------------- CNN geometry, chunks


@dataclass(frozen=True)
class ConvGeometry:
    """The CNN front end's stride and receptive field, in samples; frame t covers
    samples [t * stride, t * stride + receptive_field)."""

    stride: int
    receptive_field: int

    @classmethod
    def from_config(cls, config) -> "ConvGeometry":
        stride, receptive_field = 1, 1
        for kernel, step in zip(config.conv_kernel, config.conv_stride):
            receptive_field += (kernel - 1) * stride
            stride *= step
        return cls(stride, receptive_field)

    def frames(self, n_samples: int) -> int:
        return max(0, (n_samples - self.receptive_field) // self.stride + 1)

    def samples(self, n_frames: int) -> int:
        """The shortest input giving `n_frames` frames."""
        return (n_frames - 1) * self.stride + self.receptive_field


@dataclass(frozen=True)
class Chunk:
    """One window of a long clip: samples [start, stop) and the frames of its output that are kept."""

    start: int
    stop: int
    keep_from: int
    keep_to: int


def plan_chunks(total_frames: int, window_frames: int, overlap_frames: int, geometry: ConvGeometry) -> list[Chunk]:
    """Windows of at most `window_frames` frames on the one-pass frame grid; each keeps a core of
    window_frames - 2 x overlap_frames frames, with up to overlap_frames of context each side."""
    core = window_frames - 2 * overlap_frames
    chunks = []
    for first in range(0, total_frames, core):
        last = min(total_frames, first + core)
        window_first, window_last = max(0, first - overlap_frames), min(total_frames, last + overlap_frames)
        start = window_first * geometry.stride
        chunks.append(Chunk(start, start + geometry.samples(window_last - window_first),
                            first - window_first, last - window_first))
    return chunks


# ----------------------------------------------------------------------------- the extractor


@contextlib.contextmanager
def quiet_transformers():
    """No weight-loading progress bars or unused-weight reports (pretraining heads) on the console."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


class SslExtractor(Extractor):
    """Frame-level hidden states of a transformers speech encoder, one or several layers."""

    def __init__(self, name: str, model: str, options: SslOptions):
        self.options = options
        self.resolved = resolve_pretrained(model, options.revision, options.models_dir, name)
        self.model_config = self._checked_config()
        self.feature_extractor = self._feature_extractor()
        self.layers = parse_layers(options.layers, self.num_layers)
        self.geometry = ConvGeometry.from_config(self.model_config)
        self._window_frames = self.geometry.frames(int(options.chunk_seconds * SAMPLE_RATE))
        self._overlap_frames = int(round(options.chunk_overlap_seconds * self.frame_rate))
        if self._window_frames - 2 * self._overlap_frames < 1:
            raise SslError(f"{name}: chunk_seconds={options.chunk_seconds} leaves no frame between the overlaps")
        self.spec = self._spec(name)
        self._model = None
        self._first_conv: Optional[torch.nn.Module] = None  # group-norm checkpoints: conv + GroupNorm
        self._device: Optional[torch.device] = None

    def _spec(self, name: str) -> FeatureSpec:
        options, dim = self.options, self.model_config.hidden_size
        config = {"layers": list(self.layers), "norm": self.norm, "sample_rate": SAMPLE_RATE,
                  "normalize": bool(self.feature_extractor.do_normalize), "compute_dtype": options.dtype,
                  "chunk_seconds": options.chunk_seconds, "chunk_overlap_seconds": options.chunk_overlap_seconds}
        return FeatureSpec(name=name, modality="audio", granularity="frame", dim=dim, frame_rate=self.frame_rate,
                           dtype="float16", config=config, model_id=self.resolved.model_id,
                           model_revision=self.resolved.revision,
                           inner_shape=(len(self.layers), dim) if len(self.layers) > 1 else None)

    # --- what the checkpoint is

    @property
    def num_layers(self) -> int:
        return self.model_config.num_hidden_layers

    @property
    def frame_rate(self) -> float:
        return SAMPLE_RATE / self.geometry.stride

    @property
    def norm(self) -> str:
        """The CNN front end's normalisation: "group", "layer", or "unknown" (never padded)."""
        return getattr(self.model_config, "feat_extract_norm", None) or "unknown"

    @property
    def pads_safely(self) -> bool:
        """True when a zero-padded batch gives each item its own one-clip result (see Batching)."""
        return self.norm in ("layer", "group")

    def _checked_config(self):
        from transformers import AutoConfig

        with quiet_transformers():
            config = AutoConfig.from_pretrained(str(self.resolved.local_dir))
        missing = [key for key in ("conv_kernel", "conv_stride", "hidden_size", "num_hidden_layers")
                   if not hasattr(config, key)]
        if missing:
            raise SslError(f"{self.resolved.model_id}: {config.model_type} is not a speech encoder with a CNN "
                           f"waveform front end (config lacks {', '.join(missing)}); use e.g. WavLM, wav2vec2, HuBERT")
        if getattr(config, "add_adapter", False):
            raise SslError(f"{self.resolved.model_id}: checkpoints with an output adapter (add_adapter) are not "
                           f"supported: it changes the frame rate")
        return config

    def _feature_extractor(self):
        """The checkpoint's own; without preprocessor_config.json, fairseq's rule: normalise
        layer-norm checkpoints' input, not group-norm ones'."""
        from transformers import AutoFeatureExtractor, Wav2Vec2FeatureExtractor

        directory = self.resolved.local_dir
        if not (directory / "preprocessor_config.json").is_file():
            layer = self.norm == "layer"
            return Wav2Vec2FeatureExtractor(do_normalize=layer, return_attention_mask=layer)
        with quiet_transformers():
            extractor = AutoFeatureExtractor.from_pretrained(str(directory))
        if "input_values" not in extractor.model_input_names or not hasattr(extractor, "do_normalize"):
            raise SslError(f"{self.resolved.model_id}: {type(extractor).__name__} does not take raw waveforms "
                           f"(input_values); only CNN waveform encoders are supported")
        if extractor.sampling_rate != SAMPLE_RATE:
            raise SslError(f"{self.resolved.model_id}: expects {extractor.sampling_rate} Hz audio; mer decodes "
                           f"to {SAMPLE_RATE} Hz")
        return extractor

    # --- model state

    def load(self, device: str = "cpu") -> None:
        device = torch.device(device)
        dtype = compute_dtype(self.spec.name, self.options.dtype, device)
        from transformers import AutoModel

        with quiet_transformers():
            quiet_transformers()
            model = AutoModel.from_pretrained(str(self.resolved.local_dir))
        if not hasattr(model, "_get_feat_extract_output_lengths"):
            raise SslError(f"{self.resolved.model_id}: {type(model).__name__} has no CNN waveform front end")
        self._model = model.eval().to(device=device, dtype=dtype)
        self._first_conv, self._device = self._checked_first_conv(model), device

    def _checked_first_conv(self, model) -> Optional[torch.nn.Module]:
        """The first conv layer when the CNN normalises with a GroupNorm there; None when it has no
        GroupNorm (data2vec-audio says "group" but uses LayerNorm); any other GroupNorm fails."""
        cnn = getattr(model, "feature_extractor", None)
        group_norms = [m for m in cnn.modules() if isinstance(m, torch.nn.GroupNorm)] if cnn is not None else []
        first = first_conv_layer(model)
        if group_norms and (first is None or group_norms != [first.layer_norm]):
            raise SslError(f"{self.resolved.model_id}: {type(model).__name__}'s CNN has GroupNorm layers other than "
                           f"the first conv layer's; padding and chunking cannot be made exact for it")
        return first

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_model": None, "_first_conv": None, "_device": None}  # each process loads its own

    # --- extraction

    @torch.inference_mode()
    def extract(self, items: list[ExtractItem]) -> list[np.ndarray]:
        if self._model is None:
            self.load("cpu")
        waves = [self._model_input(item) for item in items]
        window_samples = int(self.options.chunk_seconds * SAMPLE_RATE)
        short = [i for i, wave in enumerate(waves) if len(wave) <= window_samples]
        audio_hidden: list[Optional[torch.Tensor]] = [None] * len(waves)
        for index, hidden in zip(short, self._encode([waves[i] for i in short])):
            audio_hidden[index] = hidden
        for index in sorted(set(range(len(waves))) - set(short)):
            audio_hidden[index] = self._encode_chunked(waves[index])
        return [self._as_output(hidden) for hidden in audio_hidden]

    def frame_count(self, n_samples: int) -> int:
        """Frames of a clip of n_samples, by the model's own length rule."""
        lengths = self._model._get_feat_extract_output_lengths(torch.tensor([n_samples]))
        return int(lengths[0])

    def _model_input(self, item: ExtractItem) -> np.ndarray:
        """The item's waveform through the checkpoint's feature extractor (whole-utterance normalisation)."""
        wave = item.audio
        if wave is None or wave.ndim != 1:
            raise SslError(f"{item.utterance.id}: {self.spec.name} needs mono audio (1-D), got "
                           f"{None if wave is None else wave.shape}; decode it with mer.data.audio.load_audio")
        if len(wave) < self.geometry.receptive_field:
            raise SslError(f"{item.utterance.id}: {len(wave)} samples is shorter than one {self.spec.name} frame "
                           f"({self.geometry.receptive_field} samples = "
                           f"{1000 * self.geometry.receptive_field / SAMPLE_RATE:g} ms)")
        values = self.feature_extractor(wave, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_values"]
        return np.asarray(values[0], dtype=np.float32)

    def _encode(self, waves: list[np.ndarray], clip_statistics: Optional[tuple] = None) -> list[torch.Tensor]:
        """(frames, layers, dim) per wave: one padded batch, or groups of equal length where padding is unsafe."""
        groups = [list(range(len(waves)))] if self.pads_safely else group_by_length(waves)
        audio_hidden: list[Optional[torch.Tensor]] = [None] * len(waves)
        for indices in groups:
            for index, hidden in zip(indices, self._encode_batch([waves[i] for i in indices], clip_statistics)):
                audio_hidden[index] = hidden
        return audio_hidden

    def _encode_batch(self, waves: list[np.ndarray], clip_statistics: Optional[tuple] = None) -> list[torch.Tensor]:
        if not waves:
            return []
        lengths = [len(wave) for wave in waves]
        batch = torch.zeros(len(waves), max(lengths))  # (batch, samples), zero padded
        for row, wave in zip(batch, waves):
            row[: len(wave)] = torch.from_numpy(wave)
        padded = min(lengths) != max(lengths)
        attention_mask = None
        if padded:
            attention_mask = (torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]).long()  # (batch, samples)
        with self._first_group_norm_statistics(lengths if padded else None, clip_statistics):
            audio_hidden = self._forward(batch, attention_mask)  # (batch, frames, layers, dim)
        frames = self._model._get_feat_extract_output_lengths(torch.tensor(lengths)).tolist()
        return [audio_hidden[i, :n] for i, n in enumerate(frames)]

    def _forward(self, batch: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """(batch, samples) -> the chosen layers (batch, frames, layers, dim), float32 on the CPU."""
        want_inner = any(layer != self.num_layers for layer in self.layers)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self._device)
        with warnings.catch_warnings():  # torch's notice about WavLM's mask types, once per batch
            warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
            output = self._model(batch.to(self._device, self._model.dtype), attention_mask=attention_mask,
                                 output_hidden_states=want_inner)
        picks = [output.last_hidden_state if layer == self.num_layers else output.hidden_states[layer]
                 for layer in self.layers]
        return torch.stack(picks, dim=2).float().cpu()

    def _first_group_norm_statistics(self, lengths: Optional[list[int]],
                                     clip_statistics: Optional[tuple]) -> contextlib.AbstractContextManager:
        """Group-norm checkpoints: the first conv layer normalises with the whole clip's statistics (a
        chunk window) or with each item's own frames' (a padded batch), never over padding."""
        if self._first_conv is None or (lengths is None and clip_statistics is None):
            return contextlib.nullcontext()
        norm = self._first_conv.layer_norm
        if clip_statistics is not None:
            return replace_forward(norm, functools.partial(normalise_with, norm, clip_statistics))
        conv = self._first_conv.conv
        frames = [(n - conv.kernel_size[0]) // conv.stride[0] + 1 for n in lengths]  # first conv layer's frames
        return replace_forward(norm, functools.partial(normalise_each_item, norm, frames))

    def _encode_chunked(self, wave: np.ndarray) -> torch.Tensor:
        """A long clip, window by window (memory of one window); joined frames = one-pass frames."""
        total = self.frame_count(len(wave))
        clip_statistics = self._clip_statistics(wave)
        pieces = []
        for chunk in plan_chunks(total, self._window_frames, self._overlap_frames, self.geometry):
            (hidden,) = self._encode([wave[chunk.start : chunk.stop]], clip_statistics)  # (window frames, layers, dim)
            pieces.append(hidden[chunk.keep_from : chunk.keep_to])
        return torch.cat(pieces)  # (frames, layers, dim)

    def _clip_statistics(self, wave: np.ndarray) -> Optional[tuple]:
        """Group-norm checkpoints: the first conv layer's GroupNorm statistics over the whole clip."""
        if self._first_conv is None:
            return None
        samples = torch.from_numpy(wave).to(self._device, self._model.dtype)
        block = int(self.options.chunk_seconds * SAMPLE_RATE)
        return whole_clip_statistics(self._first_conv.conv, self._first_conv.layer_norm.num_groups, samples, block)

    def _as_output(self, hidden: torch.Tensor) -> np.ndarray:
        """(frames, layers, dim) -> (frames, dim) for one layer, else unchanged; float32 numpy."""
        array = hidden.numpy()
        return array[:, 0].copy() if len(self.layers) == 1 else array.copy()


def group_by_length(waves: list[np.ndarray]) -> list[list[int]]:
    """Indices of waves grouped by identical length, in first-seen order."""
    groups: dict[int, list[int]] = defaultdict(list)
    for index, wave in enumerate(waves):
        groups[len(wave)].append(index)
    return list(groups.values())


# ----------------------------------------------------------------------------- the first GroupNorm


def first_conv_layer(model) -> Optional[torch.nn.Module]:
    """The first CNN layer of a group-norm checkpoint (`.conv` then GroupNorm `.layer_norm`, as
    transformers builds wav2vec2 / HuBERT / WavLM and their relatives); None for other front ends."""
    layers = getattr(getattr(model, "feature_extractor", None), "conv_layers", None)
    first = layers[0] if layers else None
    if isinstance(getattr(first, "layer_norm", None), torch.nn.GroupNorm) and hasattr(first, "conv"):
        return first
    return None


def normalise_each_item(norm: torch.nn.GroupNorm, frames: list[int], x: torch.Tensor) -> torch.Tensor:
    """x (batch, channels, frames), zero padded: each item's first `frames[i]` frames group-normalised
    over themselves alone, exactly what `norm` computes on the item alone; padded frames stay as they
    are (the CNN never mixes them into an item's own frames, and the encoder masks them)."""
    out = x.clone()
    for i, n in enumerate(frames):
        out[i : i + 1, :, :n] = F.group_norm(x[i : i + 1, :, :n], norm.num_groups, norm.weight, norm.bias, norm.eps)
    return out


def normalise_with(norm: torch.nn.GroupNorm, statistics: tuple, x: torch.Tensor) -> torch.Tensor:
    """x (batch, channels, frames) group-normalised with given per-group (mean, var), each (1, groups)."""
    mean, var = statistics
    grouped = x.float().reshape(x.shape[0], norm.num_groups, -1, x.shape[-1])
    normed = ((grouped - mean[..., None, None]) * torch.rsqrt(var[..., None, None] + norm.eps)).reshape(x.shape)
    if norm.affine:
        normed = normed * norm.weight.float()[:, None] + norm.bias.float()[:, None]
    return normed.to(x.dtype)


def whole_clip_statistics(conv: torch.nn.Conv1d, num_groups: int, samples: torch.Tensor,
                          block_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group mean and biased variance of conv(samples), each (1, groups), as GroupNorm computes
    them on a one-pass run; the conv runs block by block and the sums add up in float64."""
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    total = (len(samples) - kernel) // stride + 1
    block = max(1, (block_samples - kernel) // stride + 1)  # conv output frames per block
    sums = torch.zeros(num_groups, dtype=torch.float64, device=samples.device)
    squares = torch.zeros_like(sums)
    for first in range(0, total, block):
        last = min(total, first + block)
        piece = samples[first * stride : (last - 1) * stride + kernel]
        grouped = conv(piece[None, None]).double().reshape(num_groups, -1)  # (groups, channels per group x frames)
        sums += grouped.sum(dim=1)
        squares += grouped.square().sum(dim=1)
    count = total * conv.out_channels // num_groups
    mean = sums / count
    return mean.float()[None], (squares / count - mean.square()).float()[None]


@contextlib.contextmanager
def replace_forward(module: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor]):
    """Inside the block, `module(x)` is `forward(x)`: the module's own forward never runs (a forward
    hook would run it and then throw its output away)."""
    module.forward = forward
    try:
        yield
    finally:
        del module.forward


# ----------------------------------------------------------------------------- registration


def hf_audio_name(model: str) -> str:
    """`hf-audio:<dir basename>` for a local directory (the cache key follows the weights' content),
    `hf-audio:<hub id>` for a hub id."""
    path = Path(model).expanduser()
    return f"hf-audio:{path.resolve().name}" if path.is_dir() else f"hf-audio:{model}"


def named_checkpoint(name: str, hub_id: str):
    def factory(arg: str = "", **options) -> SslExtractor:
        if arg:
            raise SslError(f"{name} takes no ':{arg}'; pass model={arg} or use hf-audio:{arg}")
        parsed = SslOptions.parse(name, options)
        return SslExtractor(name, parsed.model or hub_id, parsed)

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    return factory


for _name, _hub_id in CHECKPOINTS.items():
    EXTRACTORS.register(_name)(named_checkpoint(_name, _hub_id))


@EXTRACTORS.register("hf-audio")
def hf_audio(arg: str = "", **options) -> SslExtractor:
    if not arg:
        raise SslError("hf-audio needs a model: hf-audio:<hub id or local directory>")
    if options.get("model"):
        raise SslError(f"hf-audio:{arg} names the model already; drop model={options['model']}")
    return SslExtractor(hf_audio_name(arg), arg, SslOptions.parse("hf-audio", options))
