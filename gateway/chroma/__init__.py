"""Chroma behind the gateway: per-user database namespaces and collection ownership."""
