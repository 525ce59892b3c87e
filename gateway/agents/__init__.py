"""Governed agents: lifecycle, chat over WebSocket, vault, keys, files and quotas."""
