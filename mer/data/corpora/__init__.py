"""Corpus readers. Each module registers one `prepare(root, **options) -> Corpus` in CORPORA."""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

from mer.data.utterance import Corpus
from mer.errors import CorpusError
from mer.registry import Registry

CORPORA: Registry[Callable[..., Corpus]] = Registry("corpus")

for _module in ("demo", "meld", "iemocap", "mosei", "manifest"):
    importlib.import_module(f"mer.data.corpora.{_module}")


def prepare(name: str, root=None, /, **options) -> Corpus:
    reader = CORPORA.get(name)
    _check_options(name, reader, options)
    return reader(root, **options)


def _check_options(name: str, reader: Callable[..., Corpus], options: dict) -> None:
    accepted = [p for p in inspect.signature(reader).parameters if p != "root"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise CorpusError(f"--set corpus.{unknown[0]}: the {name} reader has no option {unknown[0]!r}; "
                          f"its options: {', '.join(accepted) or 'none'}")
