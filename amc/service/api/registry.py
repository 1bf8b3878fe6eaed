"""``GET /api/v1/registry``: what a job may name (checkpoints, data sets, methods); ``GET /api/v1/me``."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from amc.service.api.deps import Config, User

router = APIRouter(prefix="/api/v1", tags=["registry"])


class Registry(BaseModel):
    checkpoints: list[str]
    datasets: list[str]
    methods: list[str]
    budget_kinds: list[str]


@router.get("/registry", response_model=Registry)
def registry(config: Config, user: User) -> Registry:
    return Registry(checkpoints=list(config.registered_checkpoints()), datasets=list(config.datasets),
                    methods=["optuna", "amc", "sensitivity"], budget_kinds=["macs", "size", "params", "latency"])


@router.get("/me")
def me(user: User) -> dict[str, str]:
    return {"user": user}
