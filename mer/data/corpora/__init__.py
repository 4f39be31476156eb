"""Corpus readers. Each module registers one `prepare(root, **options) -> Corpus` in CORPORA."""

from __future__ import annotations

import importlib
from typing import Callable

from mer.data.utterance import Corpus
from mer.registry import Registry

CORPORA: Registry[Callable[..., Corpus]] = Registry("corpus")

for _module in ("demo", "meld", "iemocap", "mosei", "manifest"):
    try:
        importlib.import_module(f"mer.data.corpora.{_module}")
    except ModuleNotFoundError as exc:  # only while a reader is being written
        if exc.name != f"mer.data.corpora.{_module}":
            raise


def prepare(name: str, root=None, /, **options) -> Corpus:
    return CORPORA.get(name)(root, **options)
