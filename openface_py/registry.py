"""``Registry``: one table of named choices (detectors, embedders, classifiers, losses) with one
error, ``UnknownNameError``, for a name that is not there."""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from openface_py.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries (what a choice needs, how it is built, its defaults), in the order they
    were added (the order ``--help`` lists them)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.kind, name, self._entries) from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
