"""Agents, messages and checkpoints."""

from __future__ import annotations
