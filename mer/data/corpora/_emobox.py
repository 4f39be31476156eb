"""EmoBox's published fold files (Ma et al., 2024: `data/<dataset>/fold_N/`), read so that `mer` models
can be trained and tested on exactly the folds of the EmoBox tables (protocol `emobox`).

    <folds_dir>/label_map.json                      optional: emotion code -> class name
    <folds_dir>/fold_1/<dataset>_train_fold_1.jsonl one JSON object a line: key, wav, emo, ...
    <folds_dir>/fold_1/<dataset>_valid_fold_1.jsonl optional (EmoBox carves a dev set from train without it)
    <folds_dir>/fold_1/<dataset>_test_fold_1.jsonl

`.json` files (one object `{key: {wav, emo, ...}}`) are read where no `.jsonl` exists.
An entry is matched to an utterance by the stem of its `wav` path, else by its `key` without the
`<dataset>-` prefix, both compared case-insensitively with `_` and `-` alike (EmoBox writes
`tess-OAF-back-angry` for `OAF_back_angry.wav`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from mer.data.utterance import Utterance
from mer.errors import MerError

PARTS = ("train", "valid", "test")
_FOLD_DIR = re.compile(r"^fold_?(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Entry:
    key: str
    wav: str
    emo: str


@dataclass
class EmoBoxFold:
    name: str  # fold_1
    parts: dict[str, list[Entry]]  # train / valid / test; valid may be empty


def read_folds(folds_dir) -> tuple[list[EmoBoxFold], dict[str, str]]:
    """Every fold under `folds_dir` (or `folds_dir` itself when it is one fold folder) and the label map."""
    if folds_dir is None or str(folds_dir).strip() == "":
        raise MerError("emobox: no fold files given; pass --protocol-option folds_dir=PATH, EmoBox's "
                       "data/<dataset> folder (the one holding fold_1, fold_2, ...)")
    root = Path(str(folds_dir)).expanduser()
    if not root.is_dir():
        raise MerError(f"emobox: folds_dir {root} is not a folder; pass EmoBox's data/<dataset> folder")
    fold_dirs = sorted((p for p in root.iterdir() if p.is_dir() and _FOLD_DIR.match(p.name)),
                       key=lambda p: int(_FOLD_DIR.match(p.name).group(1)))
    if not fold_dirs and _FOLD_DIR.match(root.name):
        fold_dirs = [root]
    if not fold_dirs:
        raise MerError(f"emobox: no fold_1, fold_2, ... folder in {root}; pass EmoBox's data/<dataset> folder")
    label_map = _label_map(root if root not in fold_dirs else root.parent)
    return [_read_fold(d) for d in fold_dirs], label_map


def _label_map(folder: Path) -> dict[str, str]:
    path = folder / "label_map.json"
    if not path.is_file():
        return {}
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MerError(f"emobox: {path} is not valid JSON ({exc}); restore it from EmoBox")
    if not isinstance(mapping, dict):
        raise MerError(f"emobox: {path} is not a JSON object (code -> class); restore it from EmoBox")
    return {str(k): str(v) for k, v in mapping.items()}


def _read_fold(folder: Path) -> EmoBoxFold:
    number = _FOLD_DIR.match(folder.name).group(1)
    parts = {}
    for part in PARTS:
        path = _part_file(folder, part, number)
        if path is None and part != "valid":
            raise MerError(f"emobox: no *_{part}_fold_{number}.jsonl in {folder}; copy the whole fold folder "
                           "from EmoBox")
        parts[part] = [] if path is None else _read_entries(path)
    return EmoBoxFold(f"fold_{number}", parts)


def _part_file(folder: Path, part: str, number: str) -> Optional[Path]:
    for suffix in ("jsonl", "json"):
        found = sorted(folder.glob(f"*_{part}_fold_{number}.{suffix}"))
        if found:
            return found[0]
    return None


def _read_entries(path: Path) -> list[Entry]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".json":
        try:
            rows = [dict(value, key=key) for key, value in json.loads(text).items()]
        except (json.JSONDecodeError, AttributeError, TypeError) as exc:
            raise MerError(f"emobox: {path} is not a JSON object of entries ({exc}); restore it from EmoBox")
        return [_entry(row, path, 1) for row in rows]
    entries = []
    for line, content in enumerate(text.splitlines(), start=1):
        if content.strip():
            try:
                row = json.loads(content)
            except json.JSONDecodeError as exc:
                raise MerError(f"emobox: {path} line {line} is not JSON ({exc.msg}); restore the file from EmoBox")
            entries.append(_entry(row, path, line))
    return entries


def _entry(row, path: Path, line: int) -> Entry:
    if not isinstance(row, dict) or not row.get("key") or "emo" not in row:
        raise MerError(f"emobox: {path} line {line} has no key or emo field; restore the file from EmoBox")
    return Entry(str(row["key"]), str(row.get("wav") or ""), str(row["emo"]))


def normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def utterance_index(utterances: Iterable[Utterance]) -> dict[str, str]:
    """Normalised clip stem and id tail -> utterance id; names shared by two utterances are left out."""
    index: dict[str, Optional[str]] = {}
    for utt in utterances:
        names = {normalise(utt.id.split("/", 1)[-1])}
        if utt.audio_path:
            names.add(normalise(Path(utt.audio_path).stem))
        for name in names:
            index[name] = utt.id if index.get(name, utt.id) == utt.id else None
    return {name: uid for name, uid in index.items() if uid is not None}


def match(entry: Entry, index: dict[str, str]) -> Optional[str]:
    key = normalise(entry.key)
    candidates = [normalise(Path(entry.wav.replace("\\", "/")).stem)] if entry.wav else []
    candidates += [key, key.split("-", 1)[-1]]
    return next((index[c] for c in candidates if c in index), None)
