"""Whisper encoder features through transformers' own WhisperFeatureExtractor and WhisperModel encoder.

Registered names (one table, CHECKPOINTS):

    whisper-base, whisper-small, whisper-medium, whisper-large-v3    openai/whisper-*   frame, 50 frames/s
    whisper-base-mean, ... whisper-large-v3-mean                      the same, mean over the clip's frames
    hf-whisper:<hub id or local dir>                                 any transformers Whisper checkpoint

Options (keyword arguments; strings from the command line are accepted), defaults in WhisperOptions:
    model          hub id or local directory replacing the registered one (hf-whisper: the argument)
    models_dir     a folder with local copies (DIR/<name>/config.json), as $MER_MODELS_DIR
    revision       hub revision
    layers         as the SSL encoders (mer/extract/ssl.py parse_layers): `last`, `lastK`, `all`, N, "3,6,9".
                   0 is the encoder's input (conv front end + positional embedding), i the output of
                   encoder layer i, N the encoder's `last_hidden_state` (layer N plus the final layer norm)
    pool           `none` (frames) or `mean` (one vector per clip: the mean of its frames)
    dtype          compute dtype `fp32` | `fp16` | `bf16` (half precision only on CUDA)
    window_batch   30 s windows per forward pass (memory only; not part of the cache key)

Frames: the encoder always sees 30 s of log-Mel (3000 frames, hop 160 samples); transformers refuses
anything shorter. A clip is zero-padded to 30 s and only the encoder frames that belong to it are
kept. Mel frame t is the STFT frame centred on sample 160 t, and the feature extractor keeps the
frames t < 3000, so a clip of n samples owns the mel frames with 160 t < n: ceil(n / 160) of them
(the feature extractor's own attention mask counts exactly these). conv2 has stride 2 and padding
1, so encoder frame j is centred on mel frame 2 j and belongs to the clip when 2 j < ceil(n / 160):
ceil(ceil(n / 160) / 2) = ceil(n / 320) frames, which is what `_get_feat_extract_output_lengths`
gives for that mask count. 50 frames per second.

Long clips: a clip longer than 30 s is cut into consecutive 30 s windows (the last one shorter), each
window is encoded exactly as a clip of its own, and their frames are joined in order. 30 s is 1500
frames, so the windows tile the frame grid and a clip of n samples always gives ceil(n / 320)
frames. Windows share no context (Whisper never saw more than 30 s either).

Batching: every window is padded to the same 30 s, so a window's features never depend on what it
was batched with (the log-Mel normalisation, max - 8 dB, is per window; the encoder has no
cross-item operation). The runner sorts clips by length before batching, so a batch's windows come
from clips of similar length; inside the extractor the windows of a batch run `window_batch` at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from mer.errors import MerError
from mer.extract.base import EXTRACTORS, ExtractItem, Extractor, FeatureSpec, check_all, check_options, register_checkpoints
from mer.extract.pretrained import resolve_pretrained
from mer.extract.ssl import COMPUTE_DTYPES, SAMPLE_RATE, compute_dtype, parse_layers, quiet_transformers

CHECKPOINTS = {
    "whisper-base": "openai/whisper-base",
    "whisper-small": "openai/whisper-small",
    "whisper-medium": "openai/whisper-medium",
    "whisper-large-v3": "openai/whisper-large-v3",
}
POOLS = ("none", "mean")


class WhisperError(MerError):
    """Bad Whisper options, a checkpoint that is not Whisper, or audio that cannot be encoded."""


@dataclass(frozen=True)
class WhisperOptions:
    """Every option of the Whisper family; the ones that change values go into spec.config."""

    model: Optional[str] = None  # hub id or local dir; None: the registered checkpoint
    models_dir: Optional[str] = None
    revision: Optional[str] = None
    layers: Union[str, int, tuple, list] = "last"
    pool: str = "none"  # none: frames; mean: one vector per clip
    dtype: str = "fp32"
    window_batch: int = 8  # 30 s windows per forward pass

    def __post_init__(self):
        checks = {
            f"dtype must be one of {sorted(COMPUTE_DTYPES)}, got {self.dtype!r}": self.dtype in COMPUTE_DTYPES,
            f"pool must be one of {POOLS}, got {self.pool!r}": self.pool in POOLS,
            "window_batch must be >= 1": self.window_batch >= 1,
        }
        check_all(checks, "whisper options", WhisperError)

    @classmethod
    def parse(cls, name: str, options: dict, **fixed) -> "WhisperOptions":
        """Options as the CLI gives them (`window_batch="4"`); `fixed` are the registered name's own."""
        known = {f.name for f in fields(cls)} - set(fixed)
        check_options(name, options, known, WhisperError)
        values = {**options, **fixed}
        try:
            if "window_batch" in values:
                values["window_batch"] = int(values["window_batch"])
        except ValueError as exc:
            raise WhisperError(f"{name}: window_batch: {exc}") from None
        for key in ("dtype", "pool"):
            if key in values:
                values[key] = str(values[key]).lower()
        return cls(**values)


class WhisperEncoderExtractor(Extractor):
    """Hidden states of Whisper's encoder: the clip's own frames, one or several layers, or their mean."""

    def __init__(self, name: str, model: str, options: WhisperOptions):
        self.options = options
        self.resolved = resolve_pretrained(model, options.revision, options.models_dir, name)
        self.model_config = self._checked_config()
        self.feature_extractor = self._feature_extractor()
        self.layers = parse_layers(options.layers, self.model_config.encoder_layers)
        self.spec = self._spec(name)
        self._encoder = None
        self._device: Optional[torch.device] = None

    def _spec(self, name: str) -> FeatureSpec:
        options, dim = self.options, self.model_config.d_model
        frames = options.pool == "none"
        config = {"layers": list(self.layers), "pool": options.pool, "sample_rate": SAMPLE_RATE,
                  "window_seconds": self.window_samples / SAMPLE_RATE, "n_mels": self.feature_extractor.feature_size,
                  "compute_dtype": options.dtype}
        return FeatureSpec(name=name, modality="audio", granularity="frame" if frames else "utterance", dim=dim,
                           frame_rate=self.frame_rate if frames else None, dtype="float16", config=config,
                           model_id=self.resolved.model_id, model_revision=self.resolved.revision,
                           inner_shape=(len(self.layers), dim) if len(self.layers) > 1 else None)

    # --- what the checkpoint is

    @property
    def window_samples(self) -> int:
        return self.feature_extractor.n_samples  # 30 s: chunk_length x sampling_rate

    @property
    def frame_rate(self) -> float:
        return SAMPLE_RATE / (self.feature_extractor.hop_length * 2)  # conv2's stride 2

    def _checked_config(self):
        from transformers import AutoConfig

        with quiet_transformers():
            config = AutoConfig.from_pretrained(str(self.resolved.local_dir))
        if config.model_type != "whisper":
            raise WhisperError(f"{self.resolved.model_id}: a {config.model_type} checkpoint, not Whisper; "
                               f"use hf-audio: for CNN speech encoders")
        return config

    def _feature_extractor(self):
        """The checkpoint's own; without preprocessor_config.json, the default one with the model's mel bins."""
        from transformers import WhisperFeatureExtractor

        directory, config = self.resolved.local_dir, self.model_config
        if (directory / "preprocessor_config.json").is_file():
            extractor = WhisperFeatureExtractor.from_pretrained(str(directory))
        else:
            extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
        if extractor.sampling_rate != SAMPLE_RATE:
            raise WhisperError(f"{self.resolved.model_id}: expects {extractor.sampling_rate} Hz audio; mer decodes "
                               f"to {SAMPLE_RATE} Hz")
        if extractor.nb_max_frames != 2 * config.max_source_positions or extractor.feature_size != config.num_mel_bins:
            raise WhisperError(f"{self.resolved.model_id}: the feature extractor ({extractor.feature_size} mels x "
                               f"{extractor.nb_max_frames} frames) does not fit the encoder ({config.num_mel_bins} "
                               f"mels x {2 * config.max_source_positions} frames)")
        return extractor

    # --- model state

    def load(self, device: str = "cpu") -> None:
        device = torch.device(device)
        dtype = compute_dtype(self.spec.name, self.options.dtype, device)
        from transformers import WhisperModel

        with quiet_transformers():
            encoder = WhisperModel.from_pretrained(str(self.resolved.local_dir)).get_encoder()  # decoder dropped
        self._encoder = encoder.eval().to(device=device, dtype=dtype)
        self._device = device

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_encoder": None, "_device": None}  # each process loads its own

    # --- extraction

    def frame_count(self, n_samples: int) -> int:
        """Encoder frames of a clip of n_samples: ceil(n / 320) (see the module docstring)."""
        full, rest = divmod(n_samples, self.window_samples)
        mel_frames = math.ceil(rest / self.feature_extractor.hop_length)
        return full * self.feature_extractor.nb_max_frames // 2 + (mel_frames + 1) // 2

    @torch.inference_mode()
    def extract(self, items: list[ExtractItem]) -> list[np.ndarray]:
        if self._encoder is None:
            self.load("cpu")
        windows, owners = [], []  # every clip's 30 s windows in order; owners[k]: the item of window k
        for index, item in enumerate(items):
            for window in self._windows(item):
                windows.append(window)
                owners.append(index)
        window_hidden = []  # per window: (frames, layers, dim)
        for first in range(0, len(windows), self.options.window_batch):
            window_hidden += self._encode(windows[first : first + self.options.window_batch])
        per_item: list[list[torch.Tensor]] = [[] for _ in items]
        for owner, hidden in zip(owners, window_hidden):
            per_item[owner].append(hidden)
        return [self._as_output(torch.cat(pieces)) for pieces in per_item]

    def _windows(self, item: ExtractItem) -> list[np.ndarray]:
        wave = item.audio
        if wave is None or wave.ndim != 1 or wave.size == 0:
            raise WhisperError(f"{item.utterance.id}: {self.spec.name} needs non-empty mono audio (1-D), got "
                               f"{None if wave is None else wave.shape}; decode it with mer.data.audio.load_audio")
        wave = np.asarray(wave, dtype=np.float32)
        return [wave[start : start + self.window_samples] for start in range(0, len(wave), self.window_samples)]

    def _encode(self, windows: list[np.ndarray]) -> list[torch.Tensor]:
        """Windows of at most 30 s -> per window (its own frames, layers, dim), float32 on the CPU."""
        inputs = self.feature_extractor(windows, sampling_rate=SAMPLE_RATE, padding="max_length",
                                        return_attention_mask=True, return_tensors="pt",
                                        device=self._device.type)  # log-Mel of each window padded to 30 s
        mel_frames = inputs["attention_mask"].sum(dim=-1)  # (windows,): ceil(n / hop) each
        frames = self._encoder._get_feat_extract_output_lengths(mel_frames).tolist()
        audio_hidden = self._forward(inputs["input_features"])  # (windows, 1500, layers, dim)
        return [audio_hidden[i, :n] for i, n in enumerate(frames)]

    def _forward(self, input_features: torch.Tensor) -> torch.Tensor:
        """(windows, mels, 3000) -> the chosen layers (windows, 1500, layers, dim)."""
        num_layers = self.model_config.encoder_layers
        want_inner = any(layer != num_layers for layer in self.layers)
        output = self._encoder(input_features.to(self._device, self._encoder.dtype), output_hidden_states=want_inner)
        picks = [output.last_hidden_state if layer == num_layers else output.hidden_states[layer]
                 for layer in self.layers]
        return torch.stack(picks, dim=2).float().cpu()

    def _as_output(self, hidden: torch.Tensor) -> np.ndarray:
        """(frames, layers, dim) -> (frames, [layers,] dim), or its mean over frames with pool=mean."""
        if self.options.pool == "mean":
            hidden = hidden.mean(dim=0, keepdim=True)
        array = hidden.numpy()
        array = array[:, 0] if len(self.layers) == 1 else array
        return array[0].copy() if self.options.pool == "mean" else array.copy()


# ----------------------------------------------------------------------------- registration


def hf_whisper_name(model: str) -> str:
    """`hf-whisper:<dir basename>` for a local directory (the cache key follows the weights' content),
    `hf-whisper:<hub id>` for a hub id."""
    path = Path(model).expanduser()
    return f"hf-whisper:{path.resolve().name}" if path.is_dir() else f"hf-whisper:{model}"


def named_checkpoint(name: str, hub_id: str, options: dict, defaults: dict) -> WhisperEncoderExtractor:
    parsed = WhisperOptions.parse(name, options, **defaults)
    return WhisperEncoderExtractor(name, parsed.model or hub_id, parsed)


register_checkpoints(CHECKPOINTS, named_checkpoint, WhisperError, " or use hf-whisper:{arg}")


@EXTRACTORS.register("hf-whisper")
def hf_whisper(arg: str = "", **options) -> WhisperEncoderExtractor:
    if not arg:
        raise WhisperError("hf-whisper needs a model: hf-whisper:<hub id or local directory>")
    if options.get("model"):
        raise WhisperError(f"hf-whisper:{arg} names the model already; drop model={options['model']}")
    return WhisperEncoderExtractor(hf_whisper_name(arg), arg, WhisperOptions.parse("hf-whisper", options))
