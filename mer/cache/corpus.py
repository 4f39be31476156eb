"""The corpus manifest `CACHE/<corpus>/utterances.jsonl` and `source.json` (how the corpus was read),
merged under the corpus's `.utterances.lock`, so that runs started together each add their records.

A record's INPUTS (text, times, dialogue, turn, audio file name) decide what its features hold: a
read that gives a stored id other inputs is refused. Its ANNOTATIONS (label, split, fold, speaker,
extra) do not touch the features: a newer read replaces them (IEMOCAP read as 4class, then 7class).
A read for text features only has no audio file (audio_path None): it matches any, and the file an
audio read found stays recorded, whichever came first."""

from __future__ import annotations

import json
import os
import shlex
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterable, Optional

from mer.cache.layout import CORPUS_MANIFEST, atomic_write_json, atomic_write_text, check_corpus_name, make_cache_folder
from mer.cache.locks import ReadOnlyCache, lock
from mer.data.utterance import Utterance, read_utterances
from mer.errors import CacheError

CORPUS_LOCK = ".utterances.lock"
SOURCE_FILE = "source.json"
INPUT_FIELDS = ("text", "start", "end", "dialogue", "turn")
ANNOTATION_FIELDS = ("label", "split", "fold", "speaker", "extra")


def merge_corpus_manifest(cache_root: Path, corpus: str, utterances: Iterable[Utterance],
                          source: Optional[dict] = None) -> int:
    """Add `utterances` to the corpus manifest (and record `source`, see `corpus_source`); returns how
    many stored records got new annotations. On a read-only cache, a read that changes nothing passes."""
    check_corpus_name(corpus, cache_root)
    corpus_dir = make_cache_folder(Path(cache_root) / corpus)
    path = corpus_dir / CORPUS_MANIFEST
    try:
        held = lock(corpus_dir / CORPUS_LOCK)
    except ReadOnlyCache as read_only:
        held, cannot_write = nullcontext(), read_only  # readers take no lock: the file is replaced atomically
    else:
        cannot_write = None
    with held:
        stored = {u.id: u for u in read_utterances(path)} if path.is_file() else {}
        added, updated, gained = _merge(stored, utterances, path, cache_root, corpus)
        if (added or updated or gained) and cannot_write is not None:
            raise ReadOnlyCache(f"{path}: cannot write here, and this read adds or changes {added + updated + gained} "
                                "utterances; pass --cache a writable folder") from cannot_write
        if added or updated or gained:
            atomic_write_text(path, "".join(u.to_json() + "\n" for u in stored.values()))
        if source is not None and cannot_write is None and read_source(corpus_dir) != source:
            atomic_write_json(corpus_dir / SOURCE_FILE, source)
    return updated


def _merge(stored: dict[str, Utterance], utterances: Iterable[Utterance], path: Path, cache_root: Path,
           corpus: str) -> tuple[int, int, int]:
    """Merge into `stored` in place; (records added, records whose annotations changed, records that
    gained the audio file a text-only read did not record)."""
    added = updated = gained = 0
    for utt in utterances:
        old = stored.get(utt.id)
        if old is None:
            added += 1
        else:
            if utt.audio_path is None:
                utt = replace(utt, audio_path=old.audio_path)
            _check_same_inputs(old, utt, path, cache_root, corpus)
            updated += _annotations(old) != _annotations(utt)
            gained += old.audio_path is None and utt.audio_path is not None
        stored[utt.id] = utt
    return added, updated, gained


def _inputs(utt: Utterance) -> tuple:
    # The file name only: one corpus mounted at two paths (two people, two machines) is one corpus.
    audio = _basename(utt.audio_path) if utt.audio_path else None
    return tuple(getattr(utt, name) for name in INPUT_FIELDS) + (audio,)


def _basename(path: str) -> str:
    return PureWindowsPath(path).name if "\\" in path else PurePosixPath(path).name


def _annotations(utt: Utterance) -> tuple:
    return tuple(json.dumps(getattr(utt, name), sort_keys=True, default=str) for name in ANNOTATION_FIELDS)


def _check_same_inputs(old: Utterance, new: Utterance, path: Path, cache_root: Path, corpus: str) -> None:
    known = len(INPUT_FIELDS) + (old.audio_path is not None)  # a record without audio file matches any
    old_inputs, new_inputs = _inputs(old)[:known], _inputs(new)[:known]
    if old_inputs == new_inputs:
        return
    field = next(name for name, a, b in zip(INPUT_FIELDS + ("audio file",), old_inputs, new_inputs) if a != b)
    raise CacheError(f"{path}: utterance {new.id} has another {field} than the cached one, so this is another "
                     f"corpus under the same name: pass --set corpus.name=OTHER, or start over with "
                     f"`mer cache rm {shlex.quote(str(cache_root))} {shlex.quote(corpus)} --yes`")


# ---- source.json -------------------------------------------------------------------------------
def corpus_source(dataset: str, root: Optional[Path], options: dict) -> dict:
    """How a corpus was read: the reader's name, its root as an absolute path (None: the reader's
    default) and the `--set corpus.KEY=VALUE` options."""
    absolute = str(Path(root).expanduser().resolve()) if root is not None else None
    return {"dataset": dataset, "root": absolute, "options": {str(k): str(v) for k, v in options.items()}}


def read_source(corpus_dir: Path) -> Optional[dict]:
    try:
        return json.loads((Path(corpus_dir) / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def extract_command(cache_root: Path, corpus: str, feature: str, options: Optional[dict] = None) -> str:
    """The `mer extract` command that adds `feature` (with `options`: `--set FEATURE.KEY=VALUE`) to
    `corpus`, from source.json; with placeholders (and saying so) when the cache does not record how
    the corpus was read."""
    settings = [part for key, value in (options or {}).items() for part in ("--set", f"{feature}.{key}={value}")]
    return corpus_command(cache_root, corpus, "extract", ["--features", feature], settings)


def corpus_command(cache_root: Path, corpus: str, verb: str, args: list[str], tail: list[str] = ()) -> str:
    """`mer VERB --dataset D [--root R] [--set corpus.K=V ...] ARGS --cache C TAIL`, quoted, from
    source.json; with placeholders (and saying so) when the cache does not record how the corpus was read."""
    source = read_source(Path(cache_root) / corpus)
    cache = os.path.abspath(cache_root)
    if source is None:
        quoted = " ".join(shlex.quote(part) for part in [*args, "--cache", cache, *tail])
        return (f"`mer {verb} --dataset READER --root CORPUS_ROOT {quoted}` (READER and CORPUS_ROOT are "
                f"placeholders: this cache does not record how {corpus} was read)")
    parts = ["mer", verb, "--dataset", source["dataset"]]
    if source.get("root"):
        parts += ["--root", source["root"]]
    for key, value in sorted(source.get("options", {}).items()):
        parts += ["--set", f"corpus.{key}={value}"]
    parts += [*args, "--cache", cache, *tail]
    return "`" + " ".join(shlex.quote(p) for p in parts) + "`"
