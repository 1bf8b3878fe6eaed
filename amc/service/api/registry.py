"""``GET /api/v1/registry``: what a job may name; ``GET /api/v1/options``: a job's options; ``GET /api/v1/me``.

The checkpoints, data sets and task plugins are the service's (its config); every other list (methods, criteria,
budget kinds, recoveries) is read from the project's registries at request time (``amc.service.choices``),
so a searcher or criterion registered later appears here, and on the page, with no edit.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from amc.service import choices
from amc.service.api.deps import Config, User
from amc.service.jobs import job_schema

router = APIRouter(prefix="/api/v1", tags=["registry"])


class Registry(BaseModel):
    checkpoints: list[str]
    datasets: list[str]
    tasks: list[str] = Field(default_factory=list, description="the task plugins a job may name (task=) instead "
                                                                "of data: registered by the operator")
    methods: list[str]
    budget_kinds: list[str]
    criteria: list[str] = Field(description="what a job's criterion may be (a channel or a weight criterion)")
    channel_criteria: list[str]
    weight_criteria: list[str]
    granularities: list[str]
    rewards: list[str]
    recoveries: list[str]
    descriptions: dict[str, dict[str, str]] = Field(
        description="list name -> entry -> its one-line help (empty where the registry has none)")


@router.get("/registry", response_model=Registry)
def registry(config: Config, user: User) -> Registry:
    lists = choices.catalog()
    tasks = config.registered_tasks()
    descriptions = {**lists, "tasks": {name: f if isinstance(f, str) else getattr(f, "__qualname__", "")
                                       for name, f in tasks.items()}}
    return Registry(checkpoints=list(config.registered_checkpoints()), datasets=list(config.datasets),
                    tasks=list(tasks), **{key: list(names) for key, names in lists.items()},
                    descriptions=descriptions)


@router.get("/options")
def options(user: User) -> dict[str, Any]:
    """A job's options (``JobSpec``'s JSON schema: fields, types, defaults, bounds, descriptions), with
    the registries' current names as the ``enum`` of the fields that name one (method, criterion)."""
    return job_schema()


@router.get("/me")
def me(user: User) -> dict[str, str]:
    return {"user": user}
