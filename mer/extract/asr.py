"""Transcripts from Whisper: transformers' WhisperForConditionalGeneration and WhisperProcessor
(`generate`), on mer's own 16 kHz mono decoding. `mer transcribe` writes them into the cache as a
text source (mer/cache/transcripts.py); text extractors read it with `text_source=asr:...`.

Registered as `asr:<model>` (so `mer extract --features asr:whisper-base` writes the same source):
    asr:whisper-tiny ... asr:whisper-large-v3-turbo    openai/whisper-* (ASR_CHECKPOINTS)
    asr:hf-whisper:<hub id or local dir>              any transformers Whisper checkpoint with its
                                                      tokenizer (a local directory by its absolute path)

Options (defaults in AsrConfig; all but models_dir go into the source's config hash):
    language        a Whisper language code or name (`en`, `english`); none: detected per clip
    task            transcribe | translate (into English)
    num_beams       beam size (1: greedy)
    max_new_tokens  tokens generated per 30 s window at most (Whisper's decoder holds 448 positions,
                    4 of them the prompt)
    model, models_dir, revision   as the other pretrained extractors

Clips longer than 30 s: transformers' own long-form generation (sequential: 30 s windows, each
next window starting at the last complete segment's timestamp, so words at window edges are not
cut), one clip per `generate` call; clips of at most 30 s are padded to 30 s and batched, so a
clip's transcript does not depend on its batch-mates. Computation is float32 on every device.
The transcript is the decoded text without special or timestamp tokens, whitespace collapsed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mer.cache.transcripts import ASR_PREFIX, LOCAL_ASR, encode_transcript, transcript_spec
from mer.errors import MerError
from mer.extract.base import EXTRACTORS, ExtractItem, Extractor, check_all, check_options
from mer.extract.pretrained import resolve_pretrained
from mer.extract.ssl import SAMPLE_RATE, quiet_transformers
from mer.extract.whisper import CHECKPOINTS, hf_whisper_name
from mer.hashing import sha256_file

ASR_CHECKPOINTS = {"whisper-tiny": "openai/whisper-tiny", **CHECKPOINTS, "whisper-large-v2": "openai/whisper-large-v2",
                   "whisper-large-v3-turbo": "openai/whisper-large-v3-turbo"}
TASKS = ("transcribe", "translate")
DECODING_FILES = ("generation_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                  "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json", "normalizer.json")


class AsrError(MerError):
    """Bad transcription options, or a checkpoint that is not a Whisper model with its tokenizer."""


@dataclass(frozen=True)
class AsrConfig:
    model: str = ""  # hub id or local directory ("" = the registered checkpoint)
    models_dir: Optional[str] = None
    revision: Optional[str] = None
    language: Optional[str] = None  # None: detected per clip
    task: str = "transcribe"
    num_beams: int = 1
    max_new_tokens: int = 440

    def __post_init__(self):
        check_all({f"task must be one of {TASKS}": self.task in TASKS,
                   "num_beams must be >= 1": self.num_beams >= 1,
                   "max_new_tokens must be between 1 and 444": 1 <= self.max_new_tokens <= 444},
                  "transcription options", AsrError)

    @classmethod
    def parse(cls, name: str, options: dict) -> "AsrConfig":
        """Options as the command line gives them (strings), over the defaults."""
        check_options(name, options, {f.name for f in fields(cls)}, AsrError)
        values = {key: value for key, value in options.items() if value not in (None, "")}
        for key in ("num_beams", "max_new_tokens"):
            if key in values:
                values[key] = _whole_number(name, key, values[key])
        if "language" in values:
            values["language"] = language_code(str(values["language"]))
        return cls(**values)


def _whole_number(name: str, key: str, value) -> int:
    if not str(value).strip().isdigit():
        raise AsrError(f"{name}: {key}={value!r} is not a whole number")
    return int(value)


def language_code(language: str) -> Optional[str]:
    """`English` / `en` -> `en` (one spelling, one cache entry); `auto` / `detect` -> None."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    wanted = language.strip().lower()
    if wanted in ("auto", "detect", "none"):
        return None
    if wanted in LANGUAGES:
        return wanted
    if wanted in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[wanted]
    raise AsrError(f"language {language!r} is not one Whisper knows; give a code such as en, de, fr, zh "
                   "(or omit it: the language is detected per clip)")


class WhisperTranscriber(Extractor):
    """Audio in, a transcript out: each item's UTF-8 bytes as uint8 rows (the text-source format)."""

    def __init__(self, name: str, config: AsrConfig):
        self.config = config
        self.resolved = resolve_pretrained(config.model, config.revision, config.models_dir)
        self._check_whisper()
        self.spec = transcript_spec(name, self._spec_config(), self.resolved.model_id, self.resolved.revision)
        self._model = None
        self._processor = None
        self._device = torch.device("cpu")

    def _check_whisper(self) -> None:
        from transformers import AutoConfig

        with quiet_transformers():
            model_type = AutoConfig.from_pretrained(str(self.resolved.local_dir)).model_type
        if model_type != "whisper":
            raise AsrError(f"{self.resolved.model_id}: a {model_type} checkpoint; transcription needs a Whisper one")
        if not any((self.resolved.local_dir / file).is_file() for file in ("tokenizer.json", "vocab.json")):
            raise AsrError(f"{self.resolved.model_id}: no tokenizer beside the weights (tokenizer.json or vocab.json); "
                           "save the WhisperProcessor into the same directory")

    def _spec_config(self) -> dict:
        config = self.config
        return {"task": config.task, "language": config.language or "detected per clip", "num_beams": config.num_beams,
                "max_new_tokens": config.max_new_tokens, "sample_rate": SAMPLE_RATE,
                "long_form": "transformers sequential long-form generation over 30 s, one clip per call",
                "decoding_files": self._decoding_files_digest()}

    def _decoding_files_digest(self) -> str:
        """Tokenizer, generation and preprocessor files change transcripts too; local weights' content
        hash covers only config.json and the weights."""
        digest = hashlib.sha256()
        for file in DECODING_FILES:
            path = self.resolved.local_dir / file
            if path.is_file():
                digest.update(file.encode())
                sha256_file(path, digest)
        return digest.hexdigest()[:16]

    @property
    def window_samples(self) -> int:
        return 30 * SAMPLE_RATE

    def load(self, device: str = "cpu") -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self._device = torch.device(device)
        with quiet_transformers():
            self._processor = WhisperProcessor.from_pretrained(str(self.resolved.local_dir))
            model = WhisperForConditionalGeneration.from_pretrained(str(self.resolved.local_dir))
        self._model = model.float().eval().to(self._device)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_model": None, "_processor": None}  # each process loads its own

    def extract(self, items: list[ExtractItem]) -> list[np.ndarray]:
        return [encode_transcript(text) for text in self.transcribe([item.audio for item in items])]

    def transcribe(self, waves: list[np.ndarray]) -> list[str]:
        """Mono 16 kHz waves -> transcripts: clips of at most 30 s batched, longer ones one by one."""
        if self._model is None:
            self.load("cpu")
        for wave in waves:
            if wave is None or np.ndim(wave) != 1 or len(wave) == 0:
                raise AsrError(f"{self.spec.name} needs non-empty mono audio (1-D)")
        texts: list[Optional[str]] = [None] * len(waves)
        short = [i for i, wave in enumerate(waves) if len(wave) <= self.window_samples]
        for i, text in zip(short, self._generate([waves[i] for i in short], long_form=False) if short else []):
            texts[i] = text
        for i in (i for i, wave in enumerate(waves) if len(wave) > self.window_samples):
            texts[i] = self._generate([waves[i]], long_form=True)[0]
        return texts

    @torch.inference_mode()
    def _generate(self, waves: list[np.ndarray], long_form: bool) -> list[str]:
        padding = {"truncation": False, "padding": "longest"} if long_form else {}
        inputs = self._processor.feature_extractor([np.asarray(w, dtype=np.float32) for w in waves],
                                                   sampling_rate=SAMPLE_RATE, return_attention_mask=True,
                                                   return_tensors="pt", **padding)
        config = self.config
        with quiet_transformers():  # per-call notes about max_length and generation_config
            generated = self._model.generate(inputs.input_features.to(self._device),
                                             attention_mask=inputs.attention_mask.to(self._device),
                                             task=config.task, language=config.language, num_beams=config.num_beams,
                                             max_new_tokens=config.max_new_tokens, return_timestamps=long_form)
        sequences = generated["sequences"] if isinstance(generated, dict) else generated
        texts = self._processor.batch_decode(sequences, skip_special_tokens=True)
        return [" ".join(text.split()) for text in texts]


def build_asr(arg: str = "", **options) -> WhisperTranscriber:
    """`asr:whisper-large-v3` or `asr:hf-whisper:<hub id or local dir>`."""
    if arg in ASR_CHECKPOINTS:
        config = AsrConfig.parse(ASR_PREFIX + arg, options)
        return WhisperTranscriber(ASR_PREFIX + arg, replace(config, model=config.model or ASR_CHECKPOINTS[arg]))
    if arg.startswith(LOCAL_ASR) and arg != LOCAL_ASR:
        if options.get("model"):
            raise AsrError(f"{ASR_PREFIX}{arg} names its model already; drop model={options['model']}")
        model = arg[len(LOCAL_ASR):]
        local = Path(model).expanduser()
        model = str(local.resolve()) if local.is_dir() else model  # a path that works from anywhere
        name = ASR_PREFIX + hf_whisper_name(model)
        return WhisperTranscriber(name, replace(AsrConfig.parse(name, options), model=model))
    raise AsrError(f"unknown ASR model {arg!r}; give one of {', '.join(ASR_CHECKPOINTS)}, or "
                   f"{LOCAL_ASR}PATH_OR_ID for another Whisper checkpoint")


EXTRACTORS.register("asr")(build_asr)
