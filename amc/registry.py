"""Named registries: the one place a name (a searcher, a criterion, a recovery, a budget kind) is listed.

Every list of choices in the project (the CLI's ``choices``, the service's request model, ``GET
/api/v1/registry``, the page's selects) is read from a ``Registry`` when it is needed, never copied,
so that a name registered later (a plugin, a test) shows up everywhere at once. Lifecycle:
``SEARCHERS = Registry("searcher")`` in the module that owns the noun -> ``SEARCHERS.register(name,
obj, help=...)`` (or ``@SEARCHERS.register(name, help=...)`` as a decorator) -> ``SEARCHERS[name]`` /
``SEARCHERS.get_or_raise(name)`` (one clear ``AmcError`` naming the known names) /
``SEARCHERS.names()`` / ``SEARCHERS.describe()`` (name -> one-line help).

A registry is a read-only ``Mapping`` from name to object (``name in REG``, ``list(REG)``,
``", ".join(REG)`` all work), in registration order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar, overload

from amc.errors import AmcError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Objects by name, for one noun (see the module doc)."""

    def __init__(self, noun: str, error: type[AmcError] = AmcError) -> None:
        self.noun = noun  # "searcher", "channel criterion"...: used in error messages
        self.error = error  # the AmcError subclass an unknown name raises
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    # -- registering -------------------------------------------------------------------------------
    @overload
    def register(self, name: str, obj: T, *, help: str = "", replace: bool = False) -> T: ...

    @overload
    def register(self, name: str, obj: None = None, *, help: str = "",
                 replace: bool = False) -> Callable[[T], T]: ...

    def register(self, name: str, obj: T | None = None, *, help: str = "", replace: bool = False) -> Any:
        """Add ``obj`` under ``name`` (with no ``obj``: a decorator that adds what it decorates).
        A name already taken is an error unless ``replace``."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise AmcError(f"a {self.noun} name must be a non-empty string without surrounding spaces, got {name!r}")

        def add(o: T) -> T:
            if name in self._items and not replace:
                raise AmcError(f"{self.noun} {name!r} is already registered")
            self._items[name] = o
            self._help[name] = help or _first_line(getattr(o, "__doc__", None))
            return o

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a plugin withdrawn, a test cleaning up); unknown names are ignored."""
        self._items.pop(name, None)
        self._help.pop(name, None)

    # -- reading -------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def get_or_raise(self, name: str) -> T:
        """The object named ``name``, or one clear error listing the known names."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise self.error(f"unknown {self.noun} {name!r}; known: {', '.join(self._items)}") from None

    def check(self, name: str) -> str:
        """``name`` itself when registered (for validators), else the same error as ``get_or_raise``."""
        self.get_or_raise(name)
        return name

    def names(self) -> list[str]:
        return list(self._items)

    def describe(self) -> dict[str, str]:
        """Name -> its one-line help, in registration order (the API's and the page's listing)."""
        return dict(self._help)

    def __repr__(self) -> str:
        return f"Registry({self.noun!r}, {self.names()})"


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n", 1)[0].strip()
