"""Helpers shared by the corpus readers: locating files, reading annotation text and CSV
without tracebacks, option checks, and report bookkeeping."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

from mer.data.utterance import CorpusReport, Utterance
from mer.errors import CorpusError

_MAX_WARNINGS = 200


def require_root(root, corpus: str, expected: str) -> Path:
    """The corpus root as an absolute path, or a CorpusError saying what it should hold."""
    if root is None or str(root) == "":
        raise CorpusError(f"{corpus}: no corpus root given; pass --root PATH, the folder that holds {expected}")
    path = Path(root).expanduser().resolve()
    if not path.exists():
        raise CorpusError(f"{corpus}: {path} does not exist; pass --root PATH, the folder that holds {expected}")
    return path


def require_dir(root, corpus: str, expected: str) -> Path:
    path = require_root(root, corpus, expected)
    if not path.is_dir():
        raise CorpusError(f"{corpus}: {path} is not a folder; pass --root PATH, the folder that holds {expected}")
    return path


def is_hidden(path: Path) -> bool:
    # "._name" AppleDouble files come with archives packed on macOS and are not data.
    return path.name.startswith(".")


def subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p))


def find_path(root: Path, names: Sequence[str], want_dir: bool = False) -> Optional[Path]:
    """The first of `names` (relative paths, in order of preference) found at `root` or
    one folder down (archives often unpack into `MELD.Raw/`, `IEMOCAP_full_release/`, ...)."""
    bases = [root] + subdirs(root)
    for name in names:
        for base in bases:
            candidate = base / name
            if candidate.is_dir() if want_dir else candidate.is_file():
                return candidate
    return None


def read_text(path: Path, report: Optional[CorpusReport] = None) -> str:
    """A text file as UTF-8 (BOM dropped); a file that is not valid UTF-8 is read as cp1252,
    the encoding of older Windows-made annotation copies, and the fallback is noted."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        if report is not None:
            note(report, "read as cp1252", f"{path}: not valid UTF-8, read as cp1252")
        return data.decode("cp1252", errors="replace")


def read_csv(path: Path, required: Iterable[str], corpus: str,
             report: Optional[CorpusReport] = None) -> list[dict[str, str]]:
    """Rows of a CSV file with a header; header names are stripped. A missing required
    column or a malformed file is a CorpusError naming the file."""
    reader = csv.DictReader(io.StringIO(read_text(path, report), newline=""))
    try:
        header = [name.strip() for name in (reader.fieldnames or [])]
        reader.fieldnames = header
        check_columns(path, header, required, corpus)
        return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except csv.Error as exc:
        raise CorpusError(f"{corpus}: {path} line {reader.line_num}: malformed CSV ({exc}); fix or re-export the file")


def check_columns(path: Path, header: Iterable[str], required: Iterable[str], corpus: str) -> None:
    present = set(header)
    for column in required:
        if column not in present:
            found = ", ".join(header) or "none"
            raise CorpusError(f"{corpus}: {path} has no column {column!r} (columns: {found}); add it")


def choose(value, allowed: Sequence[str], option: str, corpus: str) -> str:
    value = str(value).strip().lower()
    if value not in allowed:
        raise CorpusError(f"{corpus}: {option}={value!r} is not one of {', '.join(allowed)}; pick one")
    return value


def as_list(value, option: str, allowed: Sequence[str], corpus: str) -> list[str]:
    """An option given as a list or a comma-separated string ('train,dev')."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [choose(item, allowed, option, corpus) for item in items if str(item).strip()]


def optional_seconds(value, option: str, corpus: str) -> Optional[float]:
    """A duration option that may come from the command line as text; none/off/0 disables it."""
    if value is None or str(value).strip().lower() in {"", "none", "off", "0"}:
        return None
    number = to_float(value)
    if number is None or number <= 0:
        raise CorpusError(f"{corpus}: {option}={value!r} is not a positive number of seconds")
    return number


def to_float(text) -> Optional[float]:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def to_int(text) -> Optional[int]:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        value = to_float(text)
        return int(value) if value is not None and value.is_integer() else None


def ranks(keys: Iterable) -> dict:
    """key -> 0-based position in sorted order (turn numbers from ids or start times)."""
    return {key: i for i, key in enumerate(sorted(set(keys)))}


def iter_files(folder: Path, suffix: str) -> Iterator[Path]:
    for path in sorted(folder.iterdir()):
        if path.is_file() and not is_hidden(path) and path.suffix.lower() == suffix:
            yield path


def warn(report: CorpusReport, detail: str) -> None:
    if len(report.warnings) < _MAX_WARNINGS:
        report.warnings.append(detail)


def note(report: CorpusReport, what: str, detail: Optional[str] = None) -> None:
    """Count something that was KEPT but deserves attention (long clip, empty transcript);
    dropped records go through report.skip instead."""
    notes = report.counts.setdefault("notes", {})
    notes[what] = notes.get(what, 0) + 1
    if detail:
        warn(report, detail)


def finish_report(report: CorpusReport, utterances: list[Utterance], groups: Sequence[str],
                  **extra_counts: dict) -> None:
    """Fill the per-group counts; notes go last so `report.format()` reads top-down."""
    notes = report.counts.pop("notes", None)
    report.count(utterances, groups)
    report.counts.update(extra_counts)
    if notes:
        report.counts["notes"] = dict(sorted(notes.items()))


def probe_seconds(path: Path) -> Optional[float]:
    """Container duration from the header (no decoding); None where it cannot be read."""
    import av  # loads FFmpeg; only the readers of compressed clips need it

    try:
        with av.open(str(path)) as container:
            if container.duration is not None:
                return container.duration / av.time_base
            stream = container.streams.audio[0] if container.streams.audio else None
            if stream is not None and stream.duration is not None and stream.time_base:
                return float(stream.duration * stream.time_base)
    except Exception:  # FFmpeg raises many types for damaged files; the caller notes it
        return None
    return None
