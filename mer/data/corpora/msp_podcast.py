"""MSP-Podcast (Lotfian & Busso, 2019): podcast speaking turns with categorical and dimensional labels.

Layout (the release folder; the root or one folder down):
    Labels/labels_consensus.csv     FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set
    Audios/MSP-PODCAST_0001_0008.wav   (`Audio/` in older releases)
    Transcripts/MSP-PODCAST_0001_0008.txt   (optional: the text; empty when absent)

EmoClass codes: A angry, S sad, H happy, U surprise, F fear, D disgust, C contempt, N neutral,
O other, X no agreement. EmoAct / EmoVal / EmoDom: activation (arousal), valence, dominance, the
mean of the annotators' 1-7 ratings; kept on every utterance as `extra` activation, valence,
dominance (the names the IEMOCAP reader uses). Split_Set: Train, Development, Test1, Test2 (the
official, speaker-independent sets) -> split train, dev, test1, test2; rows of other sets (Test3,
whose labels are withheld) are counted and dropped. SpkrID `Unknown` -> speaker None.

`labels`: 8class (default: A S H U F D C N), 4class (N H A S, the common subset) or all (every code as
written, O and X included: what a dimensional task reads, since O and X turns have dimensions too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from mer.data.corpora import CORPORA
from mer.data.corpora._common import (
    choose, finish_report, find_path, note, read_csv, read_text, require_dir, to_float,
)
from mer.data.utterance import Corpus, CorpusReport, Utterance
from mer.errors import CorpusError

NAME = "msp-podcast"
CATEGORIES = {"A": "angry", "S": "sad", "H": "happy", "U": "surprise", "F": "fear", "D": "disgust",
              "C": "contempt", "N": "neutral"}
LABEL_SETS: dict[str, Optional[dict[str, str]]] = {
    "8class": CATEGORIES,
    "4class": {code: CATEGORIES[code] for code in ("N", "H", "A", "S")},
    "all": None,  # codes as written
}
SPLIT_SETS = {"train": "train", "development": "dev", "validation": "dev", "test1": "test1", "test2": "test2"}
DIMENSIONS = {"EmoAct": "activation", "EmoVal": "valence", "EmoDom": "dominance"}
REQUIRED_COLUMNS = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Split_Set")
_EXPECTED = "Labels/labels_consensus.csv and Audios/ (the MSP-Podcast release)"


@CORPORA.register(NAME)
def prepare(root, labels: str = "8class", *, needs_audio: bool = True) -> Corpus:
    """Read MSP-Podcast with the label set `labels` (8class, 4class or all)."""
    root = require_dir(root, NAME, _EXPECTED)
    labels = choose(labels, tuple(LABEL_SETS), "labels", NAME)
    table = find_path(root, ["Labels/labels_consensus.csv", "labels_consensus.csv"])
    if table is None:
        raise CorpusError(f"{NAME}: no Labels/labels_consensus.csv in {root} or one folder down; "
                          f"pass --root PATH, the folder that holds {_EXPECTED}")
    release = table.parent.parent if table.parent.name == "Labels" else table.parent
    audio_dir = _audio_dir(release) if needs_audio else None
    transcripts = find_path(release, ["Transcripts"], want_dir=True)
    report = CorpusReport(NAME, audio_read=needs_audio)
    utterances, seen = [], set()
    for line, row in enumerate(read_csv(table, REQUIRED_COLUMNS, NAME, report), start=2):
        utt = _utterance(row, f"{table} line {line}", LABEL_SETS[labels], labels, audio_dir, transcripts, report)
        if utt is not None and utt.id in seen:
            report.skip("duplicate row", f"{table} line {line}: {row['FileName']} appears twice; the first is kept")
        elif utt is not None:
            seen.add(utt.id)
            utterances.append(utt)
    finish_report(report, utterances, ("split", "label"),
                  speakers={"distinct": len({u.speaker for u in utterances if u.speaker}),
                            "unknown": sum(u.speaker is None for u in utterances)})
    return Corpus(NAME, utterances, report)


def _audio_dir(release: Path) -> Path:
    folder = find_path(release, ["Audios", "Audio"], want_dir=True)
    if folder is None:
        raise CorpusError(f"{NAME}: no Audios/ folder in {release}; it should hold the MSP-PODCAST_*.wav clips "
                          "that audio features need, or extract text features only")
    return folder


def _utterance(row: dict, where: str, mapping: Optional[dict[str, str]], label_set: str, audio_dir: Optional[Path],
               transcripts: Optional[Path], report: CorpusReport) -> Optional[Utterance]:
    split = SPLIT_SETS.get(row["Split_Set"].strip().lower())
    code = row["EmoClass"].strip().upper()
    if split is None:
        report.skip(f"Split_Set {row['Split_Set'] or 'empty'} (not Train/Development/Test1/Test2)")
        return None
    label = code if mapping is None else mapping.get(code)
    if label is None:
        report.skip(f"category {code or 'empty'} not in labels={label_set}")
        return None
    stem = Path(row["FileName"]).stem
    wav = audio_dir / f"{stem}.wav" if audio_dir is not None else None
    if wav is not None and not wav.is_file():
        report.skip("wav missing", f"{NAME}: {wav} not found ({where})")
        return None
    dimensions = {name: to_float(row[column]) for column, name in DIMENSIONS.items()}
    if None in dimensions.values():
        note(report, "dimension not a number", f"{where}: EmoAct/EmoVal/EmoDom not all numbers; kept as None")
    speaker = row["SpkrID"].strip()
    return Utterance(
        id=f"{NAME}/{stem}", corpus=NAME, split=split,
        speaker=None if speaker.lower() in ("", "unknown") else speaker,
        text=_transcript(transcripts, stem, report), label=label,
        audio_path=None if wav is None else str(wav),
        extra={"category": code, **dimensions, "split_set": row["Split_Set"], "gender": row.get("Gender", ""),
               "speaker_id": speaker},
    )


def _transcript(folder: Optional[Path], stem: str, report: CorpusReport) -> str:
    path = folder / f"{stem}.txt" if folder is not None else None
    if path is None or not path.is_file():
        note(report, "no transcript")
        return ""
    return " ".join(read_text(path, report).split())
