"""One small registry used by corpora, extractors and models (timm/lhotse style)."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from mer.errors import MerError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries))
            raise MerError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
