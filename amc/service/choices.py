"""What a job may name, read from the project's registries each time it is asked (never copied here).

Lifecycle: nothing to set up. ``catalog()`` -> ``{list name: {name: one-line help}}`` for ``GET
/api/v1/registry`` and the page; ``describe(noun, names)`` gives the help of the names a ``JobSpec``
field's ``Choices`` (``amc.options``) allows, for ``GET /api/v1/options``. A searcher or criterion
registered after the service started (a plugin, a test) is listed at the next request, and accepted by
``JobSpec``, whose registry-backed fields validate through ``amc.options.Choices`` at validation time.

The lists: ``methods`` (``amc.options.method_names``: the searchers of ``amc.search.registry.SEARCHERS``
plus the pipeline's no-search methods), ``criteria`` (what a job's criterion may be:
``amc.options.criterion_names``, channel or weight criteria; the granularity decides which applies),
``channel_criteria`` and ``weight_criteria`` (``amc.importance``), ``granularities``, ``rewards``,
``recoveries`` (``amc.evaluator``) and ``budget_kinds`` (``amc.budget.BUDGET_KINDS``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from amc import options


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


def _helped(names: Iterable[str], *helps: Mapping[str, str]) -> dict[str, str]:
    """``names`` in their order, each with the first help found for it."""
    return {n: next((h[n] for h in helps if h.get(n)), "") for n in names}


def methods() -> dict[str, str]:
    from amc.search.registry import SEARCHERS

    return _helped(options.method_names(), _describe(SEARCHERS), options.PIPELINE_METHODS)


def channel_criteria() -> dict[str, str]:
    return _describe(options.channel_criteria())


def weight_criteria() -> dict[str, str]:
    from amc.importance import WEIGHT_CRITERIA

    return _describe(WEIGHT_CRITERIA)


def criteria() -> dict[str, str]:
    return _helped(options.criterion_names(), channel_criteria(), weight_criteria())


def granularities() -> dict[str, str]:
    return _describe(options.granularity_names())


def rewards() -> dict[str, str]:
    from amc.evaluator import REWARDS

    return _helped(options.reward_names(), _describe(REWARDS))


def recoveries() -> dict[str, str]:
    from amc.evaluator import RECOVERIES

    return _helped(options.recovery_names(), _describe(RECOVERIES))


def budget_kinds() -> dict[str, str]:
    from amc.budget import BUDGET_KINDS

    return _describe(BUDGET_KINDS)


# list name -> (what one entry is called, as amc.options.Choices words it; its reader)
LISTS: dict[str, tuple[str, Callable[[], dict[str, str]]]] = {
    "methods": ("method", methods), "criteria": ("criterion", criteria),
    "channel_criteria": ("channel criterion", channel_criteria),
    "weight_criteria": ("weight criterion", weight_criteria),
    "granularities": ("granularity", granularities), "rewards": ("reward", rewards),
    "recoveries": ("recovery", recoveries), "budget_kinds": ("budget kind", budget_kinds),
}


def catalog() -> dict[str, dict[str, str]]:
    """Every list of choices, each name with its one-line help (see the module doc)."""
    return {key: read() for key, (_, read) in LISTS.items()}


def describe(noun: str, names: Iterable[str]) -> dict[str, str]:
    """``names`` (the choices of a field whose entries are called ``noun``) with their help, where a list knows it."""
    helps = [read() for n, read in LISTS.values() if n == noun]
    return _helped(names, *helps)
