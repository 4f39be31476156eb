"""CMU-MOSEI (Zadeh et al., 2018): YouTube monologues, sentiment in [-3, 3] per segment.

Layout of the raw release (at the root or one folder down, e.g. `CMU_MOSEI/`):
    Audio/Full/WAV_16000/<video>.wav                 the whole video's audio
    Transcript/Segmented/Combined/<video>.txt        video___idx___start___end___text
    labels.csv                                       (option labels_csv)

The labels CSV has columns `video`, `idx` (or `start`), `end`, `sentiment`, `split`, and
optionally the six emotion intensities `happy, sad, anger, surprise, disgust, fear` (kept in
`extra`). Where it comes from: the official labels (`CMU_MOSEI_Labels.csd`) and the standard
folds (`standard_train_fold`, `standard_valid_fold`, `standard_test_fold` in
`mmsdk.mmdatasdk.dataset.standard_datasets.CMU_MOSEI.cmu_mosei_std_folds`, 2249 / 300 / 678
videos) are only readable with the CMU-MultimodalSDK; export them once with it (one row per
labelled segment, with the segment's start/end and its video's fold). The .csd files are not
read here. Segments are matched by `idx`, or by start (and end) time within 0.05 s.

Each utterance points at the full-video wav with `start`/`end` set, so extraction cuts the
segment. MOSEI has one speaker per video, so `speaker` = `dialogue` = the video id; a random
video split is therefore speaker-independent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import soundfile as sf

from mer.data.corpora import CORPORA
from mer.data.corpora._common import (
    finish_report, find_path, iter_files, note, ranks, read_csv, read_text, require_dir, to_float, to_int,
)
from mer.data.utterance import Corpus, CorpusReport, Utterance
from mer.errors import CorpusError

NAME = "mosei"
AUDIO_DIR = "Audio/Full/WAV_16000"
TRANSCRIPT_DIR = "Transcript/Segmented/Combined"
EMOTIONS = ("happy", "sad", "anger", "surprise", "disgust", "fear")
SPLIT_NAMES = {"train": "train", "valid": "dev", "val": "dev", "validation": "dev", "dev": "dev", "test": "test"}
_TIME_TOLERANCE = 0.05  # seconds; exported label times and transcript times are rounded differently
_EXPECTED = f"{AUDIO_DIR}/ and {TRANSCRIPT_DIR}/ (the CMU-MOSEI raw release)"


@dataclass
class _Segment:
    video: str
    idx: str
    start: float
    end: float
    text: str


@CORPORA.register(NAME)
def prepare(root, labels_csv=None, *, needs_audio: bool = True) -> Corpus:
    """Read CMU-MOSEI segments; `labels_csv` defaults to `<root>/labels.csv`.
    `needs_audio=False`: transcripts and labels only; the segments keep their times."""
    root = require_dir(root, NAME, _EXPECTED)
    audio_dir = _require_dir(root, AUDIO_DIR) if needs_audio else None
    transcript_dir = _require_dir(root, TRANSCRIPT_DIR)
    report = CorpusReport(NAME, audio_read=needs_audio)
    labels = _read_labels(_labels_path(root, labels_csv), report)
    utterances: list[Utterance] = []
    for path in iter_files(transcript_dir, ".txt"):
        utterances += _read_video(path, audio_dir, labels.get(path.stem, []), report)
    for video, rows in labels.items():
        for row in rows:
            if not row["matched"]:
                report.skip("label without transcript segment",
                            f"{NAME}: label for {video} {row.get('idx') or row.get('start')} matches no segment")
    videos = {s: len({u.dialogue for u in utterances if u.split == s}) for s in ("train", "dev", "test")}
    finish_report(report, utterances, ("split",), videos=videos)
    return Corpus(NAME, utterances, report)


def _require_dir(root: Path, name: str) -> Path:
    folder = find_path(root, [name], want_dir=True)
    if folder is None:
        fix = "unpack the CMU-MOSEI raw release there" + (", or extract text features only" if name == AUDIO_DIR else "")
        raise CorpusError(f"{NAME}: no {name}/ in {root} or one folder down; {fix}")
    return folder


def _labels_path(root: Path, labels_csv) -> Path:
    path = Path(labels_csv).expanduser().resolve() if labels_csv else find_path(root, ["labels.csv"])
    if path is None or not path.is_file():
        shown = path or root / "labels.csv"
        raise CorpusError(f"{NAME}: labels CSV {shown} not found; export it once with the CMU-MultimodalSDK "
                          "(see docs/corpora.md) and pass labels_csv=PATH")
    return path


def _read_labels(path: Path, report: CorpusReport) -> dict[str, list[dict]]:
    rows = read_csv(path, ("video", "sentiment", "split"), NAME, report)
    if rows and "idx" not in rows[0] and "start" not in rows[0]:
        raise CorpusError(f"{NAME}: {path} has neither an 'idx' nor a 'start' column; add one to match segments")
    by_video: dict[str, list[dict]] = {}
    for line, row in enumerate(rows, start=2):
        split = SPLIT_NAMES.get(row["split"].lower())
        sentiment = to_float(row["sentiment"])
        if split is None or sentiment is None:
            report.skip("unparseable label row", f"{path} line {line}: split {row['split']!r}, "
                                                 f"sentiment {row['sentiment']!r}")
            continue
        by_video.setdefault(row["video"], []).append(dict(row, split=split, sentiment=sentiment, matched=False))
    return by_video


def _read_video(path: Path, audio_dir: Optional[Path], labels: list[dict], report: CorpusReport) -> list[Utterance]:
    segments = _read_segments(path, report)
    wav = audio_dir / f"{path.stem}.wav" if audio_dir is not None else None
    duration = _wav_seconds(wav) if wav is not None else None
    turns = ranks((s.start, s.idx) for s in segments)
    utterances = []
    for seg in segments:
        row = _match(seg, labels)
        if row is None:
            report.skip("segment without label", f"{NAME}: {seg.video} segment {seg.idx} has no row in the labels CSV")
            continue
        row["matched"] = True
        if wav is not None and not wav.is_file():
            report.skip("audio missing", f"{NAME}: {wav} not found; segment {seg.idx} skipped")
            continue
        if duration is not None and seg.start >= duration:
            report.skip("segment outside the audio", f"{NAME}: {seg.video} segment {seg.idx} starts at "
                                                     f"{seg.start} s, after the end of {wav.name} ({duration:.2f} s)")
            continue
        if duration is not None and seg.end > duration + _TIME_TOLERANCE:
            note(report, "segment ends after the audio", f"{NAME}: {seg.video} segment {seg.idx} ends at {seg.end} s, "
                                                         f"{wav.name} is {duration:.2f} s; cut at the end")
        utterances.append(_utterance(seg, row, turns[(seg.start, seg.idx)], wav))
    return utterances


def _read_segments(path: Path, report: CorpusReport) -> list[_Segment]:
    segments: dict[str, _Segment] = {}
    for number, line in enumerate(read_text(path, report).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("___", 4)
        start, end = (to_float(parts[2]), to_float(parts[3])) if len(parts) == 5 else (None, None)
        if start is None or end is None:
            report.skip("unparseable transcript line", f"{path} line {number}: {line[:60]!r}")
        elif end <= start:
            report.skip("segment with end <= start", f"{path} line {number}: [{start}, {end}]")
        elif parts[1].strip() in segments:
            report.skip("duplicate segment", f"{path} line {number}: segment {parts[1].strip()} repeated")
        else:
            # the file name is the video id; the first field repeats it
            segments[parts[1].strip()] = _Segment(path.stem, parts[1].strip(), start, end, parts[4].strip())
    return list(segments.values())


def _match(seg: _Segment, labels: list[dict]) -> Optional[dict]:
    for row in labels:
        if row.get("idx"):
            if to_int(row["idx"]) == to_int(seg.idx):
                return row
        elif _close(row.get("start"), seg.start) and (not row.get("end") or _close(row["end"], seg.end)):
            return row
    return None


def _close(text, value: float) -> bool:
    number = to_float(text)
    return number is not None and abs(number - value) <= _TIME_TOLERANCE


def _wav_seconds(wav: Path) -> Optional[float]:
    try:
        info = sf.info(str(wav))
    except Exception:  # missing or damaged: the segments are skipped or fail at extraction
        return None
    return info.frames / info.samplerate if info.samplerate else None


def _utterance(seg: _Segment, row: dict, turn: int, wav: Optional[Path]) -> Utterance:
    extra = {e: to_float(row[e]) for e in EMOTIONS if row.get(e)}
    return Utterance(
        id=f"{NAME}/{seg.video}_{seg.idx}",
        corpus=NAME,
        split=row["split"],
        speaker=seg.video,
        dialogue=seg.video,
        turn=turn,
        text=seg.text,
        label=row["sentiment"],
        audio_path=None if wav is None else str(wav),
        start=seg.start,
        end=seg.end,
        extra=extra,
    )
