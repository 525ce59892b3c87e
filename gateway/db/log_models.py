"""The transparency log's tables."""

from __future__ import annotations
