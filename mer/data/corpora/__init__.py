"""Corpus readers. Each module registers one `prepare(root, **options) -> Corpus` in CORPORA."""

from __future__ import annotations

import importlib
from typing import Callable

from mer.data.utterance import Corpus
from mer.registry import Registry

CORPORA: Registry[Callable[..., Corpus]] = Registry("corpus")

for _module in ("demo", "meld", "iemocap", "mosei", "manifest"):
    importlib.import_module(f"mer.data.corpora.{_module}")


def prepare(name: str, root=None, /, **options) -> Corpus:
    return CORPORA.get(name)(root, **options)
