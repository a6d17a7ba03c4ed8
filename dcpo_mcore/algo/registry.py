"""Name registries: advantage estimators, token objectives, aggregations and algorithms here; reward
verifiers and symbolic checks (reward/) and the tiny test-model families (hf/tiny.py) use it too.

Design rules (docs/architecture.md [conv-registries]): registering a name twice is an error (a silent
overwrite would make the behaviour depend on import order), and looking up an unknown name lists the
valid ones. Torch-free, so the reward workers import it without torch.
"""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A small name -> entry map with loud failures. ``error``: the class an unknown name raises (a
    ``ValueError``; :class:`dcpo_mcore.errors.UserValueError` where the name comes straight from the user)."""

    def __init__(self, kind: str, *, error: type[ValueError] = ValueError):
        self.kind = kind
        self.error = error
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries))
            raise self.error(f"unknown {self.kind} '{name}'; valid names: {valid}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
