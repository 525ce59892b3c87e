"""The ORM models. The spine has none yet: identity, usage, agents and the log add theirs here."""

from __future__ import annotations

from gateway.db.base import Base

__all__ = ["Base"]
