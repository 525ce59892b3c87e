"""Per server (so per worker): the connections that may be closed to make room, oldest first, and the edge's
warnings, each kind at most once per interval, so that a flood of bad clients is not also a flood of log lines."""

from __future__ import annotations

import logging
import resource
import time
import weakref
from typing import TYPE_CHECKING

from uvicorn.server import ServerState

from gateway.serving.limits import EdgeLimits

if TYPE_CHECKING:
    from gateway.serving.edge import EdgeProtocol

logger = logging.getLogger("gateway.serving")

WARNING_INTERVAL = 10.0  # seconds between two warnings of one kind

_REGISTERS: weakref.WeakKeyDictionary[ServerState, ConnectionRegister] = weakref.WeakKeyDictionary()


class ConnectionRegister:
    """The connections of one server that serve no request (idle between requests, or still sending their
    headers), in the order they became so: nginx's reusable connections, the first closed when the server is
    full, so that a flood of half-sent requests cannot lock a legitimate client out."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._reusable: dict[EdgeProtocol, None] = {}
        self._warned_at: dict[str, float] = {}
        self._unwarned: dict[str, int] = {}

    @classmethod
    def of(cls, server_state: ServerState, limits: EdgeLimits) -> ConnectionRegister:
        """The register of the server whose state `server_state` is, made on its first connection."""
        register = _REGISTERS.get(server_state)
        if register is None:
            register = _REGISTERS[server_state] = cls(limits.connection_cap())
            if register.cap < limits.max_connections:
                logger.warning(
                    "MAX_CONNECTIONS (%d) lowered to %d per worker to fit the open-file limit (%d)",
                    limits.max_connections,
                    register.cap,
                    resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                )
        return register

    def reusable(self, protocol: EdgeProtocol) -> None:
        self._reusable[protocol] = None

    def forget(self, protocol: EdgeProtocol) -> None:
        """The connection serves a request, or is gone."""
        self._reusable.pop(protocol, None)

    def take_oldest(self) -> EdgeProtocol | None:
        """The connection that has served no request for the longest, removed from the register."""
        for protocol in self._reusable:
            del self._reusable[protocol]
            return protocol
        return None

    def warn(self, kind: str, message: str) -> None:
        """Logs `message` unless a warning of `kind` was logged in the last `WARNING_INTERVAL` seconds; then
        counts it, and the next warning of that kind says how many it stood for."""
        now = time.monotonic()
        unwarned = self._unwarned.get(kind, 0)
        if now - self._warned_at.get(kind, -WARNING_INTERVAL) < WARNING_INTERVAL:
            self._unwarned[kind] = unwarned + 1
            return
        self._warned_at[kind] = now
        self._unwarned[kind] = 0
        if unwarned:
            logger.warning("%s (and %d more times since the last such warning)", message, unwarned)
        else:
            logger.warning("%s", message)
