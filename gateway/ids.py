"""Opaque resource ids with a type prefix (`usr_`, `tok_`, ...), as API.md names them."""

from __future__ import annotations

import os
import secrets


def new_id(prefix: str) -> str:
    """A fresh id such as `usr_5f0c...`: the prefix, an underscore and 24 random hex digits."""
    return f"{prefix}_{secrets.token_hex(12)}"


def random_hex() -> str:
    """128 random bits as 32 hex digits (a request or event id): `os.urandom` directly, a fifth of the cost of
    `uuid.uuid4().hex`, which the hot path paid twice per request."""
    return os.urandom(16).hex()
