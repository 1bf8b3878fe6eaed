"""What a job may name, read from the project's registries each time it is asked (never copied here).

Lifecycle: nothing to set up. ``catalog()`` -> ``{list name: {name: one-line help}}`` for ``GET
/api/v1/registry`` and the page's selects; ``JobSpec``'s validators call ``check(kind, name)``. A
searcher or criterion registered after the service started (a plugin, a test) is listed and accepted
at the next request, because every function here reads its registry when called.

The lists: ``methods`` (the searchers of ``amc.search.registry.SEARCHERS`` plus the pipeline's
no-search ``sensitivity``), ``channel_criteria`` and ``weight_criteria`` (``amc.importance``), a job's
``criteria`` (either kind: the granularity decides which one applies), ``budget_kinds``
(``amc.budget.BUDGET_KINDS``) and ``recoveries`` (``amc.evaluator.RECOVERIES``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

# the pipeline's one method that is not a searcher: no search, the policy the sensitivity scan picks
SENSITIVITY = {"sensitivity": "no search: the policy picked from the per-layer sensitivity scan"}


def _describe(names: Iterable[str] | Mapping[str, Any]) -> dict[str, str]:
    """Name -> one-line help of a registry (``Registry.describe``), or of a plain mapping / tuple of names."""
    describe = getattr(names, "describe", None)
    if callable(describe):
        return dict(describe())
    if isinstance(names, Mapping):
        return {k: _first_line(getattr(v, "__doc__", None)) for k, v in names.items()}
    return {k: "" for k in names}


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n", 1)[0].strip()


def methods() -> dict[str, str]:
    from amc.search.registry import SEARCHERS

    return _describe(SEARCHERS) | SENSITIVITY


def channel_criteria() -> dict[str, str]:
    import amc.importance

    reg: Mapping[str, Any] | None = getattr(amc.importance, "CHANNEL_CRITERIA", None)
    if reg is None:  # the channel criteria still registered by the channel pruner
        from amc.pruners.channel import CRITERIA

        reg = CRITERIA
    return _describe(reg)


def weight_criteria() -> dict[str, str]:
    from amc.importance import WEIGHT_CRITERIA

    return _describe(WEIGHT_CRITERIA)


def criteria() -> dict[str, str]:
    """What a job's ``criterion`` may be: a channel or a weight criterion (its granularity picks)."""
    channel = channel_criteria()
    return channel | {k: v for k, v in weight_criteria().items() if k not in channel}


def budget_kinds() -> dict[str, str]:
    from amc.budget import BUDGET_KINDS

    return _describe(BUDGET_KINDS)


def recoveries() -> dict[str, str]:
    from amc.evaluator import RECOVERIES

    return _describe(RECOVERIES)


# list name -> (what one entry is called, its reader)
LISTS: dict[str, tuple[str, Callable[[], dict[str, str]]]] = {
    "methods": ("method", methods), "criteria": ("criterion", criteria),
    "channel_criteria": ("channel criterion", channel_criteria),
    "weight_criteria": ("weight criterion", weight_criteria),
    "budget_kinds": ("budget kind", budget_kinds), "recoveries": ("recovery", recoveries),
}


def catalog() -> dict[str, dict[str, str]]:
    """Every list of choices, each name with its one-line help (see the module doc)."""
    return {key: read() for key, (_, read) in LISTS.items()}


def check(kind: str, name: str) -> str:
    """``name`` when the list ``kind`` (a key of ``LISTS``) holds it; else a ``ValueError`` naming the choices."""
    noun, read = LISTS[kind]
    known = read()
    if name not in known:
        raise ValueError(f"unknown {noun} {name!r}; known: {', '.join(known)}")
    return name
