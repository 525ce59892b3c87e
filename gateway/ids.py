"""Opaque resource ids with a type prefix (`usr_`, `tok_`, ...), as API.md names them."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    """A fresh id such as `usr_5f0c...`: the prefix, an underscore and 24 random hex digits."""
    return f"{prefix}_{secrets.token_hex(12)}"
