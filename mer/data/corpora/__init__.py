"""Corpus readers. Each module registers one `prepare(root, **options, *, needs_audio=True) -> Corpus` in CORPORA.

`needs_audio=False` (what `mer extract` passes when every requested feature is a text feature)
reads transcripts and labels only: no clip folder is required or probed, and every utterance
gets `audio_path=None`. It is not a user option: `--set corpus.needs_audio` is refused."""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

from mer.data.utterance import Corpus
from mer.errors import CorpusError
from mer.registry import Registry

CORPORA: Registry[Callable[..., Corpus]] = Registry("corpus")
RUNNER_OPTIONS = ("root", "needs_audio")  # set by the caller, never by --set corpus.KEY

for _module in ("demo", "meld", "iemocap", "mosei", "manifest", "ravdess", "crema_d", "tess", "emodb", "savee",
                "emorynlp", "msp_podcast"):
    importlib.import_module(f"mer.data.corpora.{_module}")


def prepare(name: str, root=None, needs_audio: bool = True, /, **options) -> Corpus:
    """Read corpus `name` with the reader's user `options`. `needs_audio` is positional so that an
    option of that name from the command line lands in `options` and is refused like any unknown one."""
    reader = CORPORA.get(name)
    _check_options(name, reader, options)
    return reader(root, needs_audio=bool(needs_audio), **options)


def _check_options(name: str, reader: Callable[..., Corpus], options: dict) -> None:
    accepted = [p for p in inspect.signature(reader).parameters if p not in RUNNER_OPTIONS]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise CorpusError(f"--set corpus.{unknown[0]}: the {name} reader has no option {unknown[0]!r}; "
                          f"its options: {', '.join(accepted) or 'none'}")
