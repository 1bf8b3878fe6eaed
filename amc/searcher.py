"""What both searchers share: the ask/tell bookkeeping of the searcher interface.

A searcher is ``propose() -> Policy`` then, once the evaluator has scored it,
``observe(policy, result)`` (the AMC agent in ``amc.agent``, Optuna in ``search.optuna_search``).
``Proposals`` remembers what each handed-out policy needs back at ``observe`` time (the agent's
transitions, Optuna's trial), matched by the policy itself, first in first out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

from amc.errors import AmcError

T = TypeVar("T")


class Proposals(Generic[T]):
    def __init__(self) -> None:
        self._open: dict[tuple, list[T]] = {}

    @staticmethod
    def _key(policy: Mapping[str, float]) -> tuple:
        return tuple(sorted(policy.items()))

    def add(self, policy: Mapping[str, float], item: T) -> None:
        self._open.setdefault(self._key(policy), []).append(item)

    def take(self, policy: Mapping[str, float]) -> T:
        """The item stored with ``policy``; an error if ``propose()`` never handed it out."""
        items = self._open.get(self._key(policy))
        if not items:
            raise AmcError("observe() got a policy that propose() did not hand out")
        return items.pop(0)
