"""Quota tiers: what each tier allows, the built-in defaults, and parsing `QUOTA_TIERS` (pure; no I/O).

`QUOTA_TIERS` is a JSON object of tier name → limits, e.g. `{"free": {"messages_per_day": 100}, "team":
{"tokens_per_month": null}}`. Given tiers are laid over the built-in ones (`free`, `pro`): a limit a tier leaves
out keeps the built-in tier's of that name, or `free`'s for a new tier; `null` means unlimited.

On the settings' floor, not in `gateway.agents`: `Settings` parses `QUOTA_TIERS` at start-up, and the foundation
imports nothing above it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields, replace
from typing import Any

DEFAULT_TIER = "free"
TIER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Tier:
    """One tier's limits; None means unlimited."""

    name: str
    messages_per_day: int | None
    tokens_per_month: int | None
    storage_bytes: int | None
    files: int | None

    def limits(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in LIMIT_NAMES}


LIMIT_NAMES = tuple(f.name for f in fields(Tier) if f.name != "name")

BUILT_IN_TIERS = (
    Tier("free", messages_per_day=200, tokens_per_month=1_000_000, storage_bytes=1024 * MIB, files=100),
    Tier(
        "pro",
        messages_per_day=5_000,
        tokens_per_month=50_000_000,
        storage_bytes=50 * 1024 * MIB,
        files=10_000,
    ),
)


def parse_tiers(raw: str | None) -> tuple[Tier, ...]:
    """The tiers `raw` (a `QUOTA_TIERS` value, or None) configures, over the built-in ones. Raises `ValueError`
    with a message for the operator."""
    tiers = {tier.name: tier for tier in BUILT_IN_TIERS}
    if raw is None:
        return tuple(tiers.values())
    try:
        document: Any = json.loads(raw)
    except ValueError:
        raise ValueError("expected a JSON object of tier name to limits") from None
    if not isinstance(document, dict):
        raise ValueError("expected a JSON object of tier name to limits")
    base = tiers[DEFAULT_TIER]
    for name, limits in document.items():
        if not TIER_NAME.fullmatch(name):
            raise ValueError(f"tier name {name!r}: letters, digits, '_', '.', '-', at most 40")
        if not isinstance(limits, dict):
            raise ValueError(f"tier {name!r}: expected an object of limits")
        unknown = sorted(set(limits) - set(LIMIT_NAMES))
        if unknown:
            raise ValueError(f"tier {name!r}: unknown limits {unknown}; known: {list(LIMIT_NAMES)}")
        for limit, value in limits.items():
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"tier {name!r}: {limit} must be a whole number of 0 or more, or null")
        tiers[name] = replace(tiers.get(name, base), name=name, **limits)
    return tuple(tiers.values())
