"""Any corpus described by a manifest file: `--dataset manifest --root data.csv` (or `.jsonl`).

Required columns: `id, audio, text, label`; optional: `split, fold, speaker, dialogue, turn,
start, end`; any other column is kept in `extra`. `audio` paths are relative to the manifest's
folder (absolute paths work too) and may be any format and rate load_audio decodes. Read for text
features only (`needs_audio=False`), `audio` may be absent and is ignored: `id, text, label`. The corpus
name is the option `name` or the manifest's file stem; ids become `<name>/<id>`. Labels are
floats (regression) when every label is a number, else strings; `label_type` overrides that.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from mer.data.corpora import CORPORA
from mer.data.corpora._common import (
    check_columns, choose, finish_report, read_csv, read_text, require_root, to_float, to_int,
)
from mer.data.utterance import Corpus, CorpusReport, Utterance
from mer.errors import CorpusError

NAME = "manifest"
REQUIRED = ("id", "audio", "text", "label")
TEXT_REQUIRED = ("id", "text", "label")
OPTIONAL = ("split", "fold", "speaker", "dialogue", "turn", "start", "end")
_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")  # no leading '.': not '..', not hidden


@CORPORA.register(NAME)
def prepare(root, name: Optional[str] = None, label_type: str = "auto", *, needs_audio: bool = True) -> Corpus:
    """Read the manifest file `root`; `label_type`: auto, class or regression."""
    path = require_root(root, NAME, "the utterances (a .csv or .jsonl manifest file)")
    if path.is_dir() or path.suffix.lower() not in _FORMATS:
        raise CorpusError(f"{NAME}: {path} is not a .csv or .jsonl file; pass --root FILE, the manifest itself")
    name = _corpus_name(name or path.stem, path)
    label_type = choose(label_type, ("auto", "class", "regression"), "label_type", NAME)
    report = CorpusReport(name, audio_read=needs_audio)
    rows = _read_rows(path, report)
    if needs_audio:
        _require_audio_column(rows, path)
    labels = _convert_labels([row["label"] for _, row in rows], label_type, path)
    utterances, seen = [], set()
    for (line, row), label in zip(rows, labels):
        if row["id"] in seen:
            raise CorpusError(f"{NAME}: {path} line {line}: id {row['id']!r} appears twice; ids must be unique")
        seen.add(row["id"])
        utt = _utterance(row, label, name, path, line, report, needs_audio)
        if utt is not None:
            utterances.append(utt)
    finish_report(report, utterances, _groups(utterances))
    return Corpus(name, utterances, report)


def _groups(utterances: list[Utterance]) -> list[str]:
    """What the report counts: label, and the columns of split, fold and speaker the manifest fills."""
    return [group for group in ("split", "fold", "label", "speaker")
            if group == "label" or any(getattr(u, group) for u in utterances)]


def _corpus_name(name: str, path: Path) -> str:
    # The name becomes a cache folder and an id prefix: keep it to one plain path segment.
    if not _SAFE_NAME.match(name):
        raise CorpusError(f"{NAME}: corpus name {name!r} (from {path.name}) may hold only letters, digits, '.', '_' "
                          "and '-', and may not start with '.'; pass --set corpus.name=NAME")
    return name


def _read_rows(path: Path, report: CorpusReport) -> list[tuple[int, dict]]:
    """(line number, row) pairs with every column of a text corpus present and `id` non-empty."""
    if _FORMATS[path.suffix.lower()] == "csv":
        rows = list(enumerate(read_csv(path, TEXT_REQUIRED, NAME, report), start=2))
    else:
        rows = _read_jsonl(path, report)
    kept = []
    for line, row in rows:
        if not str(row.get("id") or "").strip():
            report.skip("row without id", f"{path} line {line}: empty id, row skipped")
        else:
            kept.append((line, dict(row, id=str(row["id"]).strip())))
    return kept


def _read_jsonl(path: Path, report: CorpusReport) -> list[tuple[int, dict]]:
    rows = []
    for line, text in enumerate(read_text(path, report).splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            report.skip("unparseable JSON line", f"{path} line {line}: {exc.msg}")
            continue
        if not isinstance(row, dict):
            report.skip("unparseable JSON line", f"{path} line {line}: not a JSON object")
            continue
        check_columns(path, row.keys(), TEXT_REQUIRED, NAME)  # names the first row that lacks one
        rows.append((line, row))
    return rows


def _require_audio_column(rows: list[tuple[int, dict]], path: Path) -> None:
    for line, row in rows:
        if "audio" not in row:  # a CSV row has every column of the header
            where = "the header has no 'audio' column" if _FORMATS[path.suffix.lower()] == "csv" else \
                f"line {line} has no 'audio' key"
            raise CorpusError(f"{NAME}: {path}: {where}, which audio features need; "
                              "add it (clip paths), or extract text features only (e.g. --features minilm-l6)")


def _convert_labels(raw: list, label_type: str, path: Path) -> list:
    present = [value for value in raw if not _empty(value)]
    numbers = [None if isinstance(v, bool) else to_float(v) for v in present]
    if label_type == "regression" and None in numbers:
        bad = present[numbers.index(None)]
        raise CorpusError(f"{NAME}: {path}: label {bad!r} is not a number but label_type=regression")
    as_float = label_type == "regression" or (label_type == "auto" and present and None not in numbers)
    return [None if _empty(v) else float(v) if as_float else _class_name(v) for v in raw]


def _class_name(value) -> str:
    # JSON 1 and 1.0 and CSV "1" must be the same class.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _empty(value) -> bool:
    return value is None or str(value).strip() == ""


def _utterance(row: dict, label, name: str, path: Path, line: int, report: CorpusReport,
               needs_audio: bool) -> Optional[Utterance]:
    audio_path = _audio_path(row, path, line, report) if needs_audio else None
    if needs_audio and audio_path is None:
        return None
    numbers = {"turn": to_int, "start": to_float, "end": to_float}
    values = {}
    for column, convert in numbers.items():
        values[column] = None if _empty(row.get(column)) else convert(row[column])
        if values[column] is None and not _empty(row.get(column)):
            report.skip(f"unparseable {column}", f"{path} line {line}: {column}={row[column]!r}")
            return None
    if values["start"] is not None and values["end"] is not None and values["end"] <= values["start"]:
        report.skip("end <= start", f"{path} line {line}: start {values['start']} end {values['end']}")
        return None
    return Utterance(
        id=f"{name}/{row['id']}",
        corpus=name,
        text="" if _empty(row.get("text")) else str(row["text"]),
        label=label,
        audio_path=None if audio_path is None else str(audio_path),
        extra={k: v for k, v in row.items() if k not in REQUIRED + OPTIONAL},
        **{k: _text_or_none(row.get(k)) for k in ("split", "fold", "speaker", "dialogue")},
        **values,
    )


def _audio_path(row: dict, path: Path, line: int, report: CorpusReport) -> Optional[Path]:
    audio = str(row.get("audio") or "").strip()
    if not audio:
        report.skip("row without audio", f"{path} line {line}: id {row['id']!r} has an empty audio path")
        return None
    audio_path = (path.parent / Path(audio).expanduser()).resolve()
    if not audio_path.is_file():
        report.skip("audio missing", f"{path} line {line}: {audio_path} not found")
        return None
    return audio_path


def _text_or_none(value) -> Optional[str]:
    return None if _empty(value) else str(value).strip()
