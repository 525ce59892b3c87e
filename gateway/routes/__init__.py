"""Thin HTTP endpoints."""
