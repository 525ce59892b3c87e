"""The edge's limits as the server protocol takes them, and the open-file limit the connection cap must fit in."""

from __future__ import annotations

import resource
from dataclasses import dataclass

from gateway.settings import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADERS,
    Settings,
)

# Descriptors kept for what is not a client: the listening socket, the database, logs, the usage journal.
RESERVED_FILES = 64


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """What a connection may cost before the app sees it. Frozen and picklable: with `--workers N` uvicorn hands
    its config, and so the protocol factory holding these, to each spawned worker."""

    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_headers: int = DEFAULT_MAX_HEADERS
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            max_connections=settings.max_connections,
        )

    def connection_cap(self) -> int:
        """`max_connections`, lowered to fit this process's open-file limit.

        A proxied request holds two descriptors (the client's and the upstream's), so clients get half of what
        the reserve leaves: past the limit `accept` fails, and libuv then resets every new connection, the
        legitimate ones included."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(1, min(self.max_connections, (soft - RESERVED_FILES) // 2))


def raise_open_file_limit() -> int:
    """Raises this process's soft open-file limit to its hard limit (workers inherit it); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # e.g. macOS refuses RLIM_INFINITY: the soft limit stays
            return soft
    return hard
