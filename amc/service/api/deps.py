"""FastAPI dependencies: the service's config, store and queue (set on the app), and the caller's user.

They are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, one hop per
dependency per request, which on a status request cost more CPU than the request itself. Only the
database reads go to the thread pool (``run_in_threadpool``); a known token costs none (``TokenCache``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from amc.service.auth import TokenCache, user_for
from amc.service.config import ServiceConfig
from amc.service.queue import JobQueue
from amc.service.store import JobRow, Store

bearer = HTTPBearer(auto_error=False, description="an API token from `amc token create USER`")


async def get_config(request: Request) -> ServiceConfig:
    return request.app.state.config


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


async def get_tokens(request: Request) -> TokenCache:
    return request.app.state.tokens


async def current_user(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
                       store: Annotated[Store, Depends(get_store)],
                       tokens: Annotated[TokenCache, Depends(get_tokens)]) -> str:
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(401, "missing API token: send Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})
    user = tokens.get(creds.credentials)
    if user is None:
        user = await run_in_threadpool(user_for, store, creds.credentials)
        if user is None:
            raise HTTPException(401, "invalid or revoked API token", headers={"WWW-Authenticate": "Bearer"})
        tokens.put(creds.credentials, user)
    return user


async def owned_job(job_id: str, user: Annotated[str, Depends(current_user)],
                    store: Annotated[Store, Depends(get_store)]) -> JobRow:
    """The job ``job_id``: 404 when there is none, 403 when it is another user's."""
    job = await run_in_threadpool(store.get, job_id) if job_id.isalnum() else None
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    if job.owner != user:
        raise HTTPException(403, f"job {job_id} belongs to another user")
    return job


Config = Annotated[ServiceConfig, Depends(get_config)]
StoreDep = Annotated[Store, Depends(get_store)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
User = Annotated[str, Depends(current_user)]
Job = Annotated[JobRow, Depends(owned_job)]
