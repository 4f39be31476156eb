"""The Utterance record every corpus reader returns, the count report, and manifest I/O."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Optional, Union

Label = Union[str, float, None]


@dataclass
class Utterance:
    id: str  # stable, corpus-prefixed: "meld/dia0_utt0", "iemocap/Ses01F_impro01_F000"
    corpus: str
    split: Optional[str] = None  # train / dev / test where the corpus fixes one
    fold: Optional[str] = None  # session or fold key used by the protocols
    speaker: Optional[str] = None
    dialogue: Optional[str] = None
    turn: Optional[int] = None  # position inside the dialogue, 0-based, in spoken order
    text: str = ""
    label: Label = None  # class name, or a float for regression corpora
    audio_path: Optional[str] = None  # absolute path
    start: Optional[float] = None  # seconds into audio_path; None = from the beginning
    end: Optional[float] = None  # seconds; None = to the end
    extra: dict = field(default_factory=dict)  # corpus-specific fields (sentiment, vad, ...)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, row: dict) -> "Utterance":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in known})


@dataclass
class CorpusReport:
    """What a reader found: counts to compare with the published ones, and what it skipped."""

    corpus: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # group -> value -> count
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    warnings: list[str] = field(default_factory=list)  # one line each, with file names
    audio_read: bool = True  # False: transcripts and labels only (every requested feature is a text feature)

    def skip(self, reason: str, detail: Optional[str] = None) -> None:
        self.skipped[reason] += 1
        if detail and len(self.warnings) < 200:
            self.warnings.append(detail)

    def count(self, utterances: Iterable[Utterance], groups: Iterable[str] = ("split", "label", "speaker")) -> None:
        utterances = list(utterances)
        self.counts["total"] = {"utterances": len(utterances)}
        for group in groups:
            values = Counter(_group_value(u, group) for u in utterances)
            self.counts[group] = dict(sorted(values.items(), key=lambda kv: str(kv[0])))

    def to_dict(self) -> dict:
        return {"corpus": self.corpus, "counts": self.counts, "skipped": dict(self.skipped), "warnings": self.warnings,
                "audio_read": self.audio_read}

    def format(self) -> str:
        lines = [f"corpus {self.corpus}: {self.counts.get('total', {}).get('utterances', 0)} utterances"]
        if not self.audio_read:
            lines.append("  audio: not read (text features only)")
        for group, values in self.counts.items():
            if group != "total":
                lines.append(f"  {group}: {_format_counts(values)}")
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped {n}: {reason}")
        return "\n".join(lines)


LISTED_VALUES = 20  # a group with more values (CREMA-D's speakers) is summed up in one line


def _format_counts(values: dict[str, int]) -> str:
    """`a=3, b=5`; past LISTED_VALUES values, how many there are and their range (the --json summary lists them)."""
    if len(values) <= LISTED_VALUES:
        return ", ".join(f"{k}={v}" for k, v in values.items())
    low, high = min(values.values()), max(values.values())
    return f"{len(values)} values, {low if low == high else f'{low} to {high}'} each (--json: corpus_report.counts)"


def _group_value(utt: Utterance, group: str) -> str:
    value = getattr(utt, group, None)
    if value is None:
        value = utt.extra.get(group)
    return "none" if value is None else str(value)


@dataclass
class Corpus:
    name: str
    utterances: list[Utterance]
    report: CorpusReport

    def by_id(self) -> dict[str, Utterance]:
        return {u.id: u for u in self.utterances}


def read_utterances(path: Path) -> list[Utterance]:
    with open(path, encoding="utf-8") as f:
        return [Utterance.from_dict(json.loads(line)) for line in f if line.strip()]
