"""API keys: `tg_` + 43 url-safe characters, stored only as HMAC-SHA256 under the server secret."""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "tg_"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(secret: bytes, key: str) -> str:
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def display_prefix(key: str) -> str:
    """The part of a key that may be shown later to tell keys apart."""
    return key[:10]


def pseudonym(secret: bytes, owner_id: str) -> str:
    """A stable name for an owner in someone else's alerts that reveals nothing else about them."""
    return "owner-" + hmac.new(secret, f"pseudonym:{owner_id}".encode(), hashlib.sha256).hexdigest()[:12]
