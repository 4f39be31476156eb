"""EmoryNLP (Zahiri & Choi, 2018): Friends transcripts, 7 emotions, text only.

Layout (as distributed with the MELD repository; the root or one folder down):
    emorynlp_train_final.csv  emorynlp_dev_final.csv  emorynlp_test_final.csv
    columns: Utterance, Speaker, Emotion, Scene_ID, Utterance_ID, Season, Episode, Start_Time, End_Time

9489 utterances: train 7551 / dev 954 / test 984. A scene is a dialogue
(`emorynlp/{season}-{episode}-{scene}`); ids are `emorynlp/{season}-{episode}-{scene}-{utterance}`;
`turn` is the rank of Utterance_ID in its scene (the ids start at 1 or later and have gaps).
`Speaker` is a Python list literal (`['Monica Geller']`); several names (spoken together) are
joined with " & ". Labels are lower-cased: neutral, joyful, peaceful, powerful, scared, mad, sad.
There is no audio: read it for text features only.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import Optional

from mer.data.corpora import CORPORA
from mer.data.corpora._common import finish_report, find_path, note, read_csv, require_dir, to_int
from mer.data.utterance import Corpus, CorpusReport, Utterance
from mer.errors import CorpusError

NAME = "emorynlp"
SPLITS = ("train", "dev", "test")
EMOTIONS = ("neutral", "joyful", "peaceful", "powerful", "scared", "mad", "sad")  # the paper's order
FILES = {split: f"emorynlp_{split}_final.csv" for split in SPLITS}
REQUIRED_COLUMNS = ("Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode")
_EXPECTED = "emorynlp_train_final.csv, emorynlp_dev_final.csv and emorynlp_test_final.csv"


@CORPORA.register(NAME)
def prepare(root, *, needs_audio: bool = True) -> Corpus:
    """Read the three EmoryNLP CSVs (text only: audio features are refused)."""
    root = require_dir(root, NAME, _EXPECTED)
    if needs_audio:
        raise CorpusError(f"{NAME}: the corpus has no audio; extract text features only (e.g. --features minilm-l6)")
    report = CorpusReport(NAME, audio_read=False)
    utterances: list[Utterance] = []
    seen: set[str] = set()
    for split in SPLITS:
        utterances += _read_split(_csv(root, split), split, seen, report)
    finish_report(report, utterances, ("split", "label"),
                  dialogues={s: len({u.dialogue for u in utterances if u.split == s}) for s in SPLITS})
    return Corpus(NAME, utterances, report)


def _csv(root: Path, split: str) -> Path:
    path = find_path(root, [FILES[split]])
    if path is None:
        raise CorpusError(f"{NAME}: no {FILES[split]} in {root} or one folder down; pass --root PATH, "
                          f"the folder that holds {_EXPECTED}")
    return path


def _read_split(path: Path, split: str, seen: set[str], report: CorpusReport) -> list[Utterance]:
    rows = []
    for line, row in enumerate(read_csv(path, REQUIRED_COLUMNS, NAME, report), start=2):
        parsed = _parse_row(row, path, line, report)
        if parsed is None:
            continue
        if parsed["id"] in seen:
            report.skip("duplicate row", f"{path} line {line}: {parsed['id']} appears twice; the first is kept")
            continue
        seen.add(parsed["id"])
        rows.append(parsed)
    turns = _turns(rows)
    return [_utterance(row, split, turns[row["id"]]) for row in rows]


def _parse_row(row: dict, path: Path, line: int, report: CorpusReport) -> Optional[dict]:
    numbers = [to_int(row[c]) for c in ("Season", "Episode", "Scene_ID", "Utterance_ID")]
    emotion = row["Emotion"].strip().lower()
    if None in numbers or emotion not in EMOTIONS:
        report.skip("unparseable row", f"{path} line {line}: season/episode/scene/utterance not numbers, "
                                       f"or emotion {row['Emotion']!r} unknown")
        return None
    if not row["Utterance"]:
        note(report, "empty utterance", f"{path} line {line}: empty Utterance")
    season, episode, scene, utt = numbers
    dialogue = f"{season}-{episode}-{scene}"
    return {"id": f"{dialogue}-{utt}", "dialogue": dialogue, "utt": utt, "row": row, "emotion": emotion,
            "season": season, "episode": episode, "scene": scene}


def _turns(rows: list[dict]) -> dict[str, int]:
    scenes: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        scenes[row["dialogue"]].append(row)
    return {row["id"]: rank for members in scenes.values()
            for rank, row in enumerate(sorted(members, key=lambda r: r["utt"]))}


def _utterance(parsed: dict, split: str, turn: int) -> Utterance:
    row = parsed["row"]
    return Utterance(
        id=f"{NAME}/{parsed['id']}",
        corpus=NAME,
        split=split,
        speaker=speaker_of(row["Speaker"]),
        dialogue=f"{NAME}/{parsed['dialogue']}",
        turn=turn,
        text=row["Utterance"],
        label=parsed["emotion"],
        extra={"emotion": row["Emotion"], "season": parsed["season"], "episode": parsed["episode"],
               "scene": parsed["scene"], "utterance_id": parsed["utt"],
               "start_time": row.get("Start_Time", ""), "end_time": row.get("End_Time", "")},
    )


def speaker_of(text: str) -> str:
    """`['Monica Geller']` -> `Monica Geller`; several names are joined with " & "."""
    try:
        names = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text.strip()
    return " & ".join(str(n) for n in names) if isinstance(names, (list, tuple)) else str(names)
