"""`mer transcribe`: Whisper transcripts of a corpus's audio, written into the cache as a text source.

The transcripts are the extractor `asr:<model>` (mer/extract/asr.py) run through `mer extract`'s
runner: the same decoding pool, claims, commits, progress bar and resume (a second run transcribes
nothing twice; an interrupted run keeps every committed shard). Then the word error rate of the
whole source against the corpus's own transcripts is measured with jiwer and kept beside it
(`wer.json`), where `mer fuse` and `mer predict` find it.

WER normalisation (both sides): lower-cased; apostrophes deleted (don't -> dont); every other
punctuation mark or symbol (Unicode categories P and S) replaced by a space; whitespace collapsed.
Utterances whose normalised reference is empty are left out (their WER is undefined) and counted."""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

from mer.cache.reader import FeatureCache, FeatureStore
from mer.cache.transcripts import ASR_PREFIX, decode_transcript, describe_wer, write_wer
from mer.data.utterance import CorpusReport
from mer.extract.runner import ExtractConfig, ExtractSummary, extract, format_summary

NORMALISATION = ("lower-cased, apostrophes deleted, other punctuation and symbols replaced by spaces, "
                 "whitespace collapsed")
APOSTROPHES = ("'", "\u2019")


@dataclass
class TranscribeSummary:
    extraction: ExtractSummary
    source: str  # asr:NAME@HASH
    wer: Optional[dict]  # the record written to wer.json; None when not measured
    note: str = ""  # why the WER was not measured


def transcribe(config: ExtractConfig, asr: str, decoding: dict,
               on_report: Optional[Callable[[CorpusReport], None]] = None) -> TranscribeSummary:
    """Transcribe `config`'s corpus with `asr` (whisper-large-v3, hf-whisper:PATH_OR_ID) and the
    `decoding` options (language, task, num_beams, max_new_tokens), then measure the WER."""
    name = ASR_PREFIX + asr
    options = {key: str(value) for key, value in decoding.items() if value is not None}
    summary = extract(replace(config, features=[name], feature_options={name: options}), on_report)
    feature = summary.features[0]
    source = f"{feature.name}@{feature.config_hash}"
    if summary.stopped and summary.stopped.startswith("interrupted"):
        return TranscribeSummary(summary, source, None, "interrupted before the WER was measured")
    try:
        import jiwer  # noqa: F401
    except ImportError:
        return TranscribeSummary(summary, source, None, "jiwer is not installed: pip install jiwer, then run the "
                                 "same command again (it transcribes nothing twice and measures the WER)")
    record = measure_wer(config.cache, summary.corpus, Path(feature.directory))
    if record is None:
        return TranscribeSummary(summary, source, None, "no utterance has both a reference transcript and an ASR one")
    write_wer(feature.directory, record)
    return TranscribeSummary(summary, source, record)


def normalise(text: str) -> str:
    """The WER's text normalisation (module docstring)."""
    for apostrophe in APOSTROPHES:
        text = text.replace(apostrophe, "")
    spaced = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text.lower())
    return " ".join(spaced.split())


def measure_wer(cache: Path, corpus: str, source_dir: Path) -> Optional[dict]:
    """jiwer's word error rate of every stored transcript against its reference, normalised."""
    import jiwer

    references = {u.id: normalise(u.text) for u in FeatureCache(cache).utterances(corpus)}
    pairs = [(references[i], normalise(decode_transcript(rows)))
             for i, rows in FeatureStore(source_dir) if references.get(i)]
    if not pairs:
        return None
    measured = jiwer.process_words([ref for ref, _ in pairs], [hyp for _, hyp in pairs])
    return {"wer": measured.wer, "utterances": len(pairs), "without_reference": len(references) - len(pairs),
            "reference_words": sum(len(ref.split()) for ref, _ in pairs), "substitutions": measured.substitutions,
            "deletions": measured.deletions, "insertions": measured.insertions, "normalisation": NORMALISATION,
            "measured": time.time()}


def format_transcribe_summary(result: TranscribeSummary) -> str:
    lines = [format_summary(result.extraction), f"  text source: {result.source}"]
    if result.wer is None:
        lines.append(f"  WER not measured: {result.note}")
        return "\n".join(lines)
    wer = result.wer
    lines.append(f"  {describe_wer(wer)}: {wer['substitutions']} substitutions, {wer['deletions']} deletions, "
                 f"{wer['insertions']} insertions in {wer['reference_words']} reference words")
    if wer["without_reference"]:
        lines.append(f"  {wer['without_reference']} utterances without reference text or transcript are not counted")
    return "\n".join(lines)
