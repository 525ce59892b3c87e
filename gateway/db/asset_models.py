"""Agents' vault keys, API keys and files."""

from __future__ import annotations
