"""``GET /health``: the one endpoint without a token (load balancers, scripts waiting for the server)."""

from __future__ import annotations

from fastapi import APIRouter

from amc import __version__

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__}
