"""MELD (Poria et al., 2019): multi-party dialogues from Friends, one mp4 clip per utterance.

Layout (at the root or one folder down, e.g. `MELD.Raw/`):
    train_sent_emo.csv  dev_sent_emo.csv  test_sent_emo.csv
    train_splits/ or train/train_splits/      dia{D}_utt{U}.mp4
    dev_splits_complete/                      dia{D}_utt{U}.mp4
    output_repeated_splits_test/              dia{D}_utt{U}.mp4 or final_videos_testdia{D}_utt{U}.mp4

Ids are `meld/{split}/dia{D}_utt{U}` because dialogue numbers restart in every split. Rows whose
clip is missing are dropped and counted; clips without a row are counted; corrupt clips are kept
(extraction records them as failures). Clips longer than `max_clip_seconds` are kept and listed.
Read for text features only (`needs_audio=False`), the three CSVs suffice and every row is kept.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from mer.data.corpora import CORPORA
from mer.data.corpora._common import (
    as_list, choose, finish_report, find_path, iter_files, note, optional_seconds, probe_seconds,
    ranks, read_csv, require_dir, to_int,
)
from mer.data.utterance import Corpus, CorpusReport, Utterance
from mer.errors import CorpusError

NAME = "meld"
SPLITS = ("train", "dev", "test")
EMOTIONS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")  # official order
SENTIMENTS = ("negative", "neutral", "positive")
ANNOTATIONS = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
CLIP_FOLDERS = {
    "train": ("train_splits", "train/train_splits"),
    "dev": ("dev_splits_complete", "dev/dev_splits_complete"),
    "test": ("output_repeated_splits_test", "test/output_repeated_splits_test"),
}
REQUIRED_COLUMNS = ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")
_CLIP_NAME = re.compile(r"^(final_videos_test)?dia(\d+)_utt(\d+)\.mp4$", re.IGNORECASE)
_TIMESTAMP = re.compile(r"^(\d{1,2}):(\d{1,2}):(\d{1,2})(?:[,.](\d{1,3}))?$")
_EXPECTED = "train_sent_emo.csv, dev_sent_emo.csv, test_sent_emo.csv and the clip folders (MELD.Raw)"


@CORPORA.register(NAME)
def prepare(root, label: str = "emotion", splits="train,dev,test", max_clip_seconds=60.0, *,
            needs_audio: bool = True) -> Corpus:
    """Read MELD. `label`: emotion (7 classes) or sentiment (3); `splits`: which CSVs to read;
    `max_clip_seconds`: clips longer than this are listed in the report (None: do not probe).
    `needs_audio=False`: the CSVs only, every row kept, no clip folder looked at."""
    root = require_dir(root, NAME, _EXPECTED)
    label = choose(label, ("emotion", "sentiment"), "label", NAME)
    limit = optional_seconds(max_clip_seconds, "max_clip_seconds", NAME)
    report = CorpusReport(NAME, audio_read=needs_audio)
    utterances: list[Utterance] = []
    for split in as_list(splits, "splits", SPLITS, NAME):
        csv_path = _annotation_csv(root, split)
        if needs_audio:
            utterances += _read_split(root, split, csv_path, label, limit, report)
        else:
            utterances += _read_split_text(split, csv_path, label, report)
    dialogues = {s: len({u.dialogue for u in utterances if u.split == s}) for s in SPLITS}
    finish_report(report, utterances, ("split", "label", "sentiment"), dialogues=dialogues)
    return Corpus(NAME, utterances, report)


def _annotation_csv(root: Path, split: str) -> Path:
    csv_path = find_path(root, [ANNOTATIONS[split]])
    if csv_path is None:
        raise CorpusError(f"{NAME}: no {ANNOTATIONS[split]} in {root} or one folder down; "
                          f"copy it from MELD.Raw, or pass splits= without {split}")
    return csv_path


def _read_split_text(split: str, csv_path: Path, label: str, report: CorpusReport) -> list[Utterance]:
    rows = _parse_rows(csv_path, report)
    turns = _turns(rows)
    utterances = [_utterance(split, key, row, None, turns[key], label) for key, row in sorted(rows.items())]
    _note_zero_length_rows(utterances, rows, csv_path, report)
    return utterances


def _read_split(root: Path, split: str, csv_path: Path, label: str, limit: Optional[float],
                report: CorpusReport) -> list[Utterance]:
    folder = find_path(root, CLIP_FOLDERS[split], want_dir=True)
    if folder is None:
        raise CorpusError(f"{NAME}: no {' or '.join(CLIP_FOLDERS[split])}/ folder in {root} or one folder down; "
                          f"extract the {split} clips from MELD.Raw, or extract text features only")
    rows = _parse_rows(csv_path, report)
    clips = _index_clips(folder, report)
    turns = _turns(rows)
    utterances = []
    for key, row in sorted(rows.items()):
        clip = clips.get(key)
        if clip is None:
            report.skip("clip missing", f"{NAME}/{split}/dia{key[0]}_utt{key[1]}: no clip in {folder}")
            continue
        utterances.append(_utterance(split, key, row, clip, turns[key], label))
    _note_zero_length_rows(utterances, rows, csv_path, report)
    for key in sorted(clips.keys() - rows.keys()):
        report.skip("clip without annotation", f"{clips[key]}: no row in {csv_path.name}")
    if limit is not None:
        _check_durations(utterances, limit, report)
    return utterances


def _note_zero_length_rows(utterances: list[Utterance], rows: dict, csv_path: Path, report: CorpusReport) -> None:
    for utt in utterances:
        row = rows[(utt.extra["dialogue_id"], utt.extra["utterance_id"])]
        if row.get("StartTime") and row.get("StartTime") == row.get("EndTime"):
            note(report, "StartTime equals EndTime", f"{utt.id}: StartTime == EndTime in {csv_path.name}; "
                                                     "kept; the times are not used")


def _parse_rows(csv_path: Path, report: CorpusReport) -> dict[tuple[int, int], dict]:
    rows = {}
    for line, row in enumerate(read_csv(csv_path, REQUIRED_COLUMNS, NAME, report), start=2):
        key = (to_int(row["Dialogue_ID"]), to_int(row["Utterance_ID"]))
        emotion, sentiment = row["Emotion"].lower(), row["Sentiment"].lower()
        if None in key or emotion not in EMOTIONS or sentiment not in SENTIMENTS:
            report.skip("unparseable annotation row", f"{csv_path} line {line}: bad ids or labels, row skipped")
        elif key in rows:
            report.skip("duplicate annotation row", f"{csv_path} line {line}: dia{key[0]}_utt{key[1]} repeated")
        else:
            rows[key] = dict(row, Emotion=emotion, Sentiment=sentiment)
    return rows


def _turns(rows: dict) -> dict[tuple[int, int], int]:
    # Utterance_IDs have gaps inside some dialogues: the turn is the rank, not the id.
    by_dialogue: dict[int, list[int]] = {}
    for dialogue, utt in rows:
        by_dialogue.setdefault(dialogue, []).append(utt)
    return {(d, u): rank for d, utts in by_dialogue.items() for u, rank in ranks(utts).items()}


def _index_clips(folder: Path, report: CorpusReport) -> dict[tuple[int, int], Path]:
    clips: dict[tuple[int, int], Path] = {}
    for path in iter_files(folder, ".mp4"):
        match = _CLIP_NAME.match(path.name)
        if match is None:
            report.skip("clip name not dia{D}_utt{U}.mp4", f"{NAME}: {path} ignored")
            continue
        key = (int(match.group(2)), int(match.group(3)))
        prefixed = match.group(1) is not None
        if key not in clips or not prefixed:  # the plain name wins over a final_videos_test copy
            clips[key] = path
    return clips


def _utterance(split: str, key: tuple[int, int], row: dict, clip: Optional[Path], turn: int, label: str) -> Utterance:
    dialogue, utt = key
    return Utterance(
        id=f"{NAME}/{split}/dia{dialogue}_utt{utt}",
        corpus=NAME,
        split=split,
        speaker=repair_text(row["Speaker"]),
        dialogue=f"{NAME}/{split}/dia{dialogue}",
        turn=turn,
        text=repair_text(row["Utterance"]),
        label=row["Emotion"] if label == "emotion" else row["Sentiment"],
        audio_path=None if clip is None else str(clip),
        extra={
            "emotion": row["Emotion"],
            "sentiment": row["Sentiment"],
            "dialogue_id": dialogue,
            "utterance_id": utt,
            "season": to_int(row.get("Season")),
            "episode": to_int(row.get("Episode")),
            "episode_start": parse_timestamp(row.get("StartTime", "")),
            "episode_end": parse_timestamp(row.get("EndTime", "")),
        },
    )


def _check_durations(utterances: list[Utterance], limit: float, report: CorpusReport) -> None:
    for utt in utterances:
        seconds = probe_seconds(Path(utt.audio_path))
        if seconds is None:
            note(report, "clip header unreadable", f"{utt.audio_path}: cannot read the clip header; "
                                                   "extraction will likely fail on it")
        elif seconds > limit:
            note(report, f"clip longer than {limit:g} s", f"{utt.audio_path}: {seconds:.1f} s, longer than "
                                                         f"max_clip_seconds={limit:g} (mis-cut clip?)")
        if seconds is not None:
            utt.extra["clip_seconds"] = round(seconds, 3)


def parse_timestamp(text: str) -> Optional[float]:
    """'0:12:32,632' or '00:12:32,632' -> 752.632 seconds; None when it does not parse."""
    match = _TIMESTAMP.match((text or "").strip())
    if match is None:
        return None
    hours, minutes, seconds, fraction = match.groups()
    value = int(hours) * 3600 + int(minutes) * 60 + int(seconds)
    if fraction:
        value += int(fraction) / 10 ** len(fraction)
    return round(value, 3)


# cp1252 bytes 0x80..0xBF as text: the characters that follow a lead byte in UTF-8 mojibake.
_CP1252_CONTINUATION = "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in range(0x80, 0xC0))
_CONT = "[" + re.escape(_CP1252_CONTINUATION) + "]"
_MOJIBAKE = re.compile(f"[\u00c2-\u00df]{_CONT}|[\u00e0-\u00ef]{_CONT}{{2}}|[\u00f0-\u00f4]{_CONT}{{3}}")
_C1_CONTROLS = re.compile("[\u0080-\u009f]")


def repair_text(text: str) -> str:
    """Give old and new MELD CSV copies the same text: undo UTF-8-read-as-cp1252 mojibake
    ('â€™', 'Â’') and re-decode C1 control characters as the cp1252 bytes they were ('\\x92' -> '’')."""
    text = _MOJIBAKE.sub(_undo_mojibake, text)
    return _C1_CONTROLS.sub(_c1_as_cp1252, text)


def _undo_mojibake(match: re.Match) -> str:
    chunk = match.group(0)
    try:
        raw = bytes(_cp1252_byte(ch) for ch in chunk)
        return raw.decode("utf-8")
    except (UnicodeDecodeError, ValueError):
        return chunk  # not mojibake after all (real accented text)


def _cp1252_byte(ch: str) -> int:
    try:
        return ch.encode("cp1252")[0]
    except UnicodeEncodeError:
        return ch.encode("latin-1")[0]  # the five code points cp1252 leaves undefined


def _c1_as_cp1252(match: re.Match) -> str:
    return _cp1252_byte_to_text(ord(match.group(0)))


def _cp1252_byte_to_text(byte: int) -> str:
    try:
        return bytes([byte]).decode("cp1252")
    except UnicodeDecodeError:
        return ""  # undefined in cp1252: a stray control character carries no text
