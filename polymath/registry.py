"""One small registry type: strategies, verifiers, merge methods and entropy modes are each listed once.

A registry maps a name to an entry; config validation (``Literal`` types), ``ALL_*`` lists and CLI help
all read the names from it, so a new entry needs no edit anywhere else.

    STRATEGIES = Registry("curate.strategy")
    @STRATEGIES.register("random")
    def random_subset(...): ...
    STRATEGIES["random"]            # the entry
    STRATEGIES.names()              # ('random', ...), registration order
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from polymath.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind; ``key`` is the config key that chooses among them (for error messages)."""

    def __init__(self, key: str):
        self.key = key
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            self.add(name, entry)
            return entry

        return add

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.key}: {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def unknown(self, name: object) -> str:
        """The message for a name that is not registered: the key, the closest name, every choice."""
        close = difflib.get_close_matches(str(name), list(self._entries), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{self.key}: unknown {name!r}{hint} (choose from: {', '.join(self._entries)})"

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(self.unknown(name)) from None

    def check(self, name: str) -> str:
        """``name`` if registered, else ValueError (for pydantic validators, which report it under the field)."""
        if name not in self._entries:
            raise ValueError(self.unknown(name))
        return name

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())
