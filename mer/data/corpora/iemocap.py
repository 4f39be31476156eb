"""IEMOCAP (Busso et al., 2008): 5 sessions x 2 actors, dyadic dialogues, one wav per utterance.

Layout (at the root or one folder down, e.g. `IEMOCAP_full_release/`):
    Session{n}/sentences/wav/<dialog>/<utt>.wav
    Session{n}/dialog/EmoEvaluation/<dialog>.txt     [start - end]<TAB>utt<TAB>cat<TAB>[v, a, d]
    Session{n}/dialog/transcriptions/<dialog>.txt    utt [start-end]: text

`labels`: 4class (neu, hap+exc -> happy, ang, sad: 5531 utterances), 7class (fru, neu, ang, sad,
exc, hap, sur: 7487) or all (every category as written, xxx and oth included). The speaker is the
session plus the gender letter of the LAST id segment (`Ses01F_impro01_M003` -> `Ses01M`);
fold is the session folder (`Session1`), for leave-one-session-out protocols. Read for text
features only (`needs_audio=False`), `sentences/wav` is not needed and every labelled line is kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mer.data.corpora import CORPORA
from mer.data.corpora._common import (
    choose, finish_report, find_path, iter_files, note, ranks, read_text, require_dir, subdirs,
)
from mer.data.utterance import Corpus, CorpusReport, Utterance
from mer.errors import CorpusError

NAME = "iemocap"
LABEL_SETS: dict[str, Optional[dict[str, str]]] = {
    "4class": {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"},
    "7class": {"fru": "frustration", "neu": "neutral", "ang": "anger", "sad": "sadness",
               "exc": "excitement", "hap": "happiness", "sur": "surprise"},
    "all": None,  # categories as written
}
_SESSION = re.compile(r"^Session(\d+)$")
_LABEL_LINE = re.compile(
    r"^\[(?P<start>\d+(?:\.\d+)?) - (?P<end>\d+(?:\.\d+)?)\]\t(?P<id>Ses\d\d[FM]\S*)\t(?P<cat>[a-z]+)\t"
    r"\[(?P<v>\d+(?:\.\d+)?), (?P<a>\d+(?:\.\d+)?), (?P<d>\d+(?:\.\d+)?)\]\s*$")
_TRANSCRIPT_LINE = re.compile(r"^(?P<id>Ses\d\d[FM]\S*_[FM]\d+) \[[\d.]+-[\d.]+\]:\s?(?P<text>.*)$")
_EXPECTED = "Session1 .. Session5 (IEMOCAP_full_release)"


@dataclass
class _Label:
    utt: str
    start: float
    end: float
    category: str
    vad: tuple[float, float, float]


@CORPORA.register(NAME)
def prepare(root, labels: str = "4class", *, needs_audio: bool = True) -> Corpus:
    """Read IEMOCAP with the label set `labels` (4class, 7class or all)."""
    root = require_dir(root, NAME, _EXPECTED)
    labels = choose(labels, tuple(LABEL_SETS), "labels", NAME)
    report = CorpusReport(NAME, audio_read=needs_audio)
    utterances: list[Utterance] = []
    for session in _sessions(root):
        utterances += _read_session(session, LABEL_SETS[labels], labels, needs_audio, report)
    finish_report(report, utterances, ("fold", "label", "speaker"))
    return Corpus(NAME, utterances, report)


def _sessions(root: Path) -> list[Path]:
    first = find_path(root, ["Session1", "Session2", "Session3", "Session4", "Session5"], want_dir=True)
    if first is None:
        raise CorpusError(f"{NAME}: no Session1 .. Session5 folder in {root} or one folder down; "
                          f"pass --root PATH, the folder that holds {_EXPECTED}")
    sessions = [p for p in subdirs(first.parent) if _SESSION.match(p.name)]
    return sorted(sessions, key=lambda p: int(_SESSION.match(p.name).group(1)))


def _read_session(session: Path, mapping: Optional[dict[str, str]], label_set: str, needs_audio: bool,
                  report: CorpusReport) -> list[Utterance]:
    label_dir = _require(session / "dialog" / "EmoEvaluation", "the EmoEvaluation/<dialog>.txt label files")
    transcript_dir = _require(session / "dialog" / "transcriptions", "the transcriptions/<dialog>.txt files")
    wav_dir = _require_wavs(session / "sentences" / "wav") if needs_audio else None
    utterances = []
    for label_file in iter_files(label_dir, ".txt"):
        texts = _read_transcripts(transcript_dir / label_file.name, report)
        for lab, turn in _read_labels(label_file, report):
            name = lab.category if mapping is None else mapping.get(lab.category)
            wav = wav_dir / label_file.stem / f"{lab.utt}.wav" if wav_dir is not None else None
            if name is None:
                report.skip(f"category {lab.category} not in labels={label_set}")
            elif wav is not None and not wav.is_file():
                report.skip("wav missing", f"{NAME}: {wav} not found; utterance {lab.utt} skipped")
            else:
                if lab.utt not in texts:
                    note(report, "no transcript line", f"{NAME}: {lab.utt} has no line in {transcript_dir}")
                text = texts.get(lab.utt, "")
                utterances.append(_utterance(lab, name, session.name, label_file.stem, turn, text, wav))
    return utterances


def _require(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        raise CorpusError(f"{NAME}: {folder} is missing; it should hold {what} (IEMOCAP_full_release layout)")
    return folder


def _require_wavs(folder: Path) -> Path:
    if not folder.is_dir():
        raise CorpusError(f"{NAME}: {folder} is missing; it should hold the wav/<dialog>/<utt>.wav files that audio "
                          "features need (IEMOCAP_full_release layout), or extract text features only")
    return folder


def _read_labels(path: Path, report: CorpusReport) -> list[tuple[_Label, int]]:
    """The parseable label lines of one dialog, each with its turn (rank by start time)."""
    found: dict[str, _Label] = {}
    for number, line in enumerate(read_text(path, report).splitlines(), start=1):
        if not line.startswith("["):
            continue  # header, blank and per-annotator (C-E1:, A-E1:) lines
        match = _LABEL_LINE.match(line)
        if match is None:
            report.skip("unparseable label line", f"{path} line {number}: {line[:60]!r}")
        elif match["id"] in found:
            report.skip("duplicate label line", f"{path} line {number}: {match['id']} labelled twice")
        else:
            found[match["id"]] = _Label(match["id"], float(match["start"]), float(match["end"]), match["cat"],
                                        (float(match["v"]), float(match["a"]), float(match["d"])))
    turns = ranks((lab.start, lab.utt) for lab in found.values())
    return [(lab, turns[(lab.start, lab.utt)]) for lab in found.values()]


def _read_transcripts(path: Path, report: CorpusReport) -> dict[str, str]:
    if not path.is_file():
        note(report, "transcription file missing", f"{NAME}: {path} not found; texts left empty")
        return {}
    texts = {}
    for number, line in enumerate(read_text(path, report).splitlines(), start=1):
        match = _TRANSCRIPT_LINE.match(line.strip())
        if match is None:
            if line.strip():
                report.skip("unparseable transcript line", f"{path} line {number}: {line[:60]!r}")
            continue
        texts[match["id"]] = match["text"].strip()
    return texts


def _utterance(lab: _Label, label: str, session: str, dialog: str, turn: int, text: str,
               wav: Optional[Path]) -> Utterance:
    valence, activation, dominance = lab.vad
    return Utterance(
        id=f"{NAME}/{lab.utt}",
        corpus=NAME,
        fold=session,
        speaker=speaker_of(lab.utt),
        dialogue=dialog,
        turn=turn,
        text=text,
        label=label,
        audio_path=None if wav is None else str(wav),
        extra={"category": lab.category, "valence": valence, "activation": activation,
               "dominance": dominance, "dialog_start": lab.start, "dialog_end": lab.end},
    )


def speaker_of(utt_id: str) -> str:
    """`Ses01F_impro01_M003` -> `Ses01M`: the gender letter of the last id segment is the speaker."""
    return utt_id[:5] + utt_id.rsplit("_", 1)[-1][0]
