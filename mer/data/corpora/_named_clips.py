"""The one reader behind every corpus whose labels are in its clip names (RAVDESS, CREMA-D, TESS,
EmoDB, SAVEE): walk a folder, let the corpus parse each name, drop what is not a clip, and make
the utterances. A corpus module supplies only `parse(path) -> NamedClip | str` (a str is the
reason the file is skipped).

What every such corpus is handled for, in one place:
- macOS debris (`._name.wav` AppleDouble files, `__MACOSX/`, `.DS_Store`): not clips; the
  AppleDouble ones are counted because they have an audio suffix and look like clips;
- `.wav` / `.WAV` (and `.flac`, for re-encoded copies): suffixes compared case-insensitively;
- the same clip twice (an archive unpacked into itself, `.wav` next to `.WAV`): the shallowest
  copy is kept (then the first in path order), the others counted;
- empty files and git-lfs pointers (a repository downloaded as a zip without git-lfs): counted,
  and when every clip is a pointer, one error saying how to get the audio.
Empty files and pointers are only looked for when audio is read (`needs_audio`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Union

from mer.data.corpora._common import finish_report, find_path, note, require_dir
from mer.data.utterance import Corpus, CorpusReport, Utterance
from mer.errors import CorpusError

AUDIO_SUFFIXES = (".wav", ".flac")
APPLEDOUBLE = "macOS metadata file (._name or __MACOSX/)"
LFS_POINTER = "git-lfs pointer, not audio"
EMPTY_FILE = "empty file"
DUPLICATE = "duplicate clip"
_LFS_MAGIC = b"version https://git-lfs"


@dataclass
class NamedClip:
    """What one clip name says."""

    key: str  # the id without the corpus prefix; unique within the corpus
    label: str
    speaker: str
    text: str = ""
    extra: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # kept, but worth a line in the report


Parse = Callable[[Path], Union[NamedClip, str]]


def prepare_named(corpus: str, root, parse: Parse, needs_audio: bool, expected: str, subfolder: str = "",
                  groups: tuple[str, ...] = ("label", "speaker")) -> Corpus:
    """A corpus's `prepare`: its clips under `root/subfolder` (found at the root or one folder down; the
    root itself when there is no such folder), counted per `groups`."""
    root = require_dir(root, corpus, expected)
    folder = (find_path(root, [subfolder], want_dir=True) if subfolder else None) or root
    report = CorpusReport(corpus, audio_read=needs_audio)
    utterances = read_named_clips(corpus, folder, parse, needs_audio, report, expected)
    finish_report(report, utterances, groups)
    return Corpus(corpus, utterances, report)


def read_named_clips(corpus: str, folder: Path, parse: Parse, needs_audio: bool, report: CorpusReport,
                     expected: str) -> list[Utterance]:
    """The utterances of every clip under `folder` (any depth) that `parse` accepts, in path order."""
    clips: dict[str, tuple[Path, NamedClip]] = {}
    for path in _candidate_files(folder, report, corpus):
        parsed = parse(path)
        if isinstance(parsed, str):
            report.skip(parsed, f"{corpus}: {path}: {parsed}")
        elif needs_audio and not _holds_audio(path, report, corpus):
            continue
        elif parsed.key in clips:
            report.skip(DUPLICATE, f"{corpus}: {path} repeats {clips[parsed.key][0]}; the first is kept")
        else:
            clips[parsed.key] = (path, parsed)
            for line in parsed.notes:
                note(report, line, f"{corpus}: {path}: {line}")
    if not clips:
        raise CorpusError(_nothing_found(corpus, folder, report, expected))
    return [_utterance(corpus, path, clip, needs_audio) for path, clip in clips.values()]


def _candidate_files(folder: Path, report: CorpusReport, corpus: str) -> Iterator[Path]:
    for path in sorted(folder.rglob("*"), key=lambda p: (len(p.relative_to(folder).parts), str(p))):
        if path.suffix.lower() not in AUDIO_SUFFIXES or not path.is_file():
            continue  # transcripts, label files, .DS_Store, video: not clips
        if _is_mac_debris(path.relative_to(folder)):
            report.skip(APPLEDOUBLE, f"{corpus}: {path}: {APPLEDOUBLE}")
        else:
            yield path


def _is_mac_debris(relative: Path) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in relative.parts)


def _holds_audio(path: Path, report: CorpusReport, corpus: str) -> bool:
    size = path.stat().st_size
    if size == 0:
        report.skip(EMPTY_FILE, f"{corpus}: {path} is empty (0 bytes)")
        return False
    if size < 1024:  # a pointer is ~130 bytes; no real clip is that small
        with open(path, "rb") as f:
            if f.read(len(_LFS_MAGIC)) == _LFS_MAGIC:
                report.skip(LFS_POINTER, f"{corpus}: {path} is a git-lfs pointer, not audio")
                return False
    return True


def _nothing_found(corpus: str, folder: Path, report: CorpusReport, expected: str) -> str:
    if report.skipped.get(LFS_POINTER):
        return (f"{corpus}: every clip under {folder} is a git-lfs pointer, not audio; clone the repository "
                "with git-lfs installed (or run `git lfs pull` in it) and pass that folder as --root")
    if report.skipped:
        reasons = ", ".join(f"{n} {reason}" for reason, n in report.skipped.most_common(3))
        return f"{corpus}: no usable clip under {folder} ({reasons}); pass --root PATH, the folder that holds {expected}"
    return f"{corpus}: no .wav clip under {folder}; pass --root PATH, the folder that holds {expected}"


def _utterance(corpus: str, path: Path, clip: NamedClip, needs_audio: bool) -> Utterance:
    return Utterance(id=f"{corpus}/{clip.key}", corpus=corpus, speaker=clip.speaker, text=clip.text,
                     label=clip.label, audio_path=str(path) if needs_audio else None, extra=dict(clip.extra))

