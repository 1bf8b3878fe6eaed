"""API tokens: ``amc_<random>`` secrets, of which only the sha256 is stored.

``create_token(store, user) -> secret`` (shown once), ``user_for(store, secret) -> user | None``;
``amc token create|list|revoke`` is the command line over these.
"""

from __future__ import annotations

import hashlib
import secrets

from amc.service.store import Store

PREFIX = "amc_"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(store: Store, user: str, note: str = "") -> tuple[str, str]:
    """A new token for ``user``; returns (token id, secret). Only the secret's hash is kept."""
    secret = PREFIX + secrets.token_urlsafe(32)  # 256 random bits
    return store.add_token(user, digest(secret), note), secret


def user_for(store: Store, secret: str) -> str | None:
    return store.user_of(digest(secret)) if secret.startswith(PREFIX) else None
