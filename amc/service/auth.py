"""API tokens: ``amc_<random>`` secrets, of which only the sha256 is stored.

``create_token(store, user) -> secret`` (shown once), ``user_for(store, secret) -> user | None``;
``amc token create|list|revoke`` is the command line over these. ``TokenCache`` keeps the server from
reading the tokens table on every request: a secret it has seen is trusted for ``ttl_s`` seconds, so a
revoked token stops working within that time (``amc token revoke`` runs in another process).

A plain sha256 is enough here, unlike for passwords: the secrets are 256 random bits, not guessable
words, so a slow KDF would cost every request CPU time and protect nothing.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

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


class TokenCache:
    """Valid tokens seen in the last ``ttl_s`` seconds, by digest (see the module doc). Unknown or
    revoked tokens are never cached: each such request reads the table (one indexed lookup)."""

    MAX = 4096  # distinct valid tokens kept; beyond that the cache starts afresh

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._seen: dict[str, tuple[str, float]] = {}  # digest -> (user, when it was read)
        self._lock = threading.Lock()

    def get(self, secret: str) -> str | None:
        """The user when ``secret`` was valid less than ``ttl_s`` ago; None: ask the store."""
        if self.ttl_s <= 0:
            return None
        hit = self._seen.get(digest(secret))
        return hit[0] if hit and time.monotonic() - hit[1] < self.ttl_s else None

    def put(self, secret: str, user: str) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._seen) >= self.MAX:
                self._seen.clear()
            self._seen[digest(secret)] = (user, time.monotonic())
