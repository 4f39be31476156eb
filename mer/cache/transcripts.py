"""Text sources: transcripts made from a corpus's audio (`mer transcribe`), stored beside the corpus's
own transcripts (the `text` of utterances.jsonl, the source named "reference").

A text source is stored as a feature of modality "transcript" (`CACHE/<corpus>/asr_<model>@<hash>/`),
so it is written, resumed, verified and removed exactly as features are: each utterance's transcript
is its UTF-8 bytes, one uint8 row per byte (an empty transcript has no row). Its name is the feature's
(`asr:whisper-large-v3`), and `asr:whisper-large-v3@HASH` names one config of it. `wer.json` in its
folder holds the word error rate against the reference transcripts that `mer transcribe` measured."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from mer.cache.corpus import corpus_command
from mer.cache.layout import atomic_write_json
from mer.cache.reader import FeatureCache, FeatureInfo, FeatureStore
from mer.cache.spec import FeatureSpec
from mer.errors import CacheError

TRANSCRIPT = "transcript"  # the modality of a text source
REFERENCE = "reference"  # the corpus's own transcripts
ASR_PREFIX = "asr:"
LOCAL_ASR = "hf-whisper:"  # --asr hf-whisper:PATH_OR_ID
WER_FILE = "wer.json"
DECODING_OPTIONS = ("language", "task", "num_beams", "max_new_tokens")  # `mer transcribe --language ...`


def transcript_spec(name: str, config: dict, model_id: Optional[str], model_revision: Optional[str]) -> FeatureSpec:
    """The spec of a text source: one uint8 row per UTF-8 byte of the transcript."""
    return FeatureSpec(name=name, modality=TRANSCRIPT, granularity="token", dim=1, dtype="uint8", config=config,
                       model_id=model_id, model_revision=model_revision)


def encode_transcript(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).reshape(-1, 1).copy()


def decode_transcript(rows: np.ndarray) -> str:
    return np.asarray(rows, dtype=np.uint8).tobytes().decode("utf-8")


def is_reference(source: Optional[str]) -> bool:
    return source in (None, "", REFERENCE)


def source_name(info: FeatureInfo) -> str:
    """The full name of one text source: `asr:whisper-large-v3@<config hash>`."""
    return f"{info.name}@{info.config_hash}"


@dataclass
class Transcripts:
    source: str  # asr:NAME@HASH
    texts: dict[str, str]  # utterance id -> transcript
    failures: dict[str, str]  # utterance id -> why it has none


def find_text_source(cache_root: Path, corpus: str, source: str) -> FeatureInfo:
    """The cached text source `asr:NAME` or `asr:NAME@HASH` (a hash prefix): one line naming the
    `mer transcribe` command when it is missing, and the configs when several fit."""
    cache = FeatureCache(cache_root)
    found = [f for f in cache.configs(corpus, source) if f.spec.modality == TRANSCRIPT]
    if not found:
        raise CacheError(f"{Path(cache_root) / corpus}: no text source {source!r}; make it with "
                         f"{transcribe_command(cache_root, corpus, source)}")
    if len(found) > 1:
        names = ", ".join(source_name(f) for f in found)
        raise CacheError(f"{Path(cache_root) / corpus}: text source {source!r} exists in several configs ({names}); "
                         f"name one, e.g. text_source={source_name(found[0])}")
    return found[0]


def read_transcripts(cache_root: Path, corpus: str, source: str, ids: list[str]) -> Transcripts:
    """Every transcript of `source` for `ids`; a source that lacks some of them (a transcription not
    finished) is one line naming the command that finishes it."""
    info = find_text_source(cache_root, corpus, source)
    store = FeatureStore(info.directory)
    missing = [i for i in ids if i not in store and i not in store.failures]
    if missing:
        raise CacheError(f"{info.directory}: {source_name(info)} has no transcript yet for {len(missing)} of "
                         f"{len(ids)} utterances (e.g. {missing[0]}); finish it with "
                         f"{transcribe_command(cache_root, corpus, source_name(info), info.spec)}")
    texts = {utt_id: decode_transcript(rows) for utt_id, rows in store.read_many(i for i in ids if i in store)}
    failures = {i: f"no transcript in {source_name(info)} ({store.failures[i]})" for i in ids if i in store.failures}
    return Transcripts(source_name(info), texts, failures)


def transcribe_command(cache_root: Path, corpus: str, source: str, spec: Optional[FeatureSpec] = None) -> str:
    """The `mer transcribe` command that makes (or finishes) `source`, with the decoding options its
    spec records."""
    name = source.partition("@")[0]
    asr = name[len(ASR_PREFIX):] if name.startswith(ASR_PREFIX) else name
    checkpoint = asr[len(LOCAL_ASR):] if asr.startswith(LOCAL_ASR) else None
    note = ""
    if checkpoint is not None and spec is not None and spec.model_id:
        asr = LOCAL_ASR + spec.model_id  # the spec's name holds a local directory's basename only
    elif checkpoint is not None and "/" not in checkpoint:
        asr, note = f"{LOCAL_ASR}DIR", f" (DIR: the directory of the Whisper checkpoint {checkpoint})"
    args = ["--asr", asr]
    for key, value in sorted((spec.options if spec else {}).items()):
        if key in DECODING_OPTIONS and value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    return corpus_command(cache_root, corpus, "transcribe", args) + note


def write_wer(source_dir: Path, record: dict) -> None:
    atomic_write_json(Path(source_dir) / WER_FILE, record)


def read_wer(source_dir: Path) -> Optional[dict]:
    try:
        return json.loads((Path(source_dir) / WER_FILE).read_text())
    except (OSError, ValueError):
        return None


def describe_wer(record: Optional[dict]) -> str:
    """'WER 0.231 over 40 utterances (lower-cased, ...)' or what is known instead."""
    if not record or record.get("wer") is None:
        return "WER not measured"
    return (f"WER {record['wer']:.3f} against the reference transcripts over {record['utterances']} utterances "
            f"({record['normalisation']})")
