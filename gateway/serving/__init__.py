"""How uvicorn serves the gateway: its httptools protocol with the edge's limits (`edge`), each request served by
our lean cycle (`cycle`) or, one line away in `PROTOCOL`, by uvicorn's own (`EdgeProtocol`), the limits on
either way; and how it stops on a signal (`shutdown`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from gateway.serving.cycle import GatewayHttpProtocol
from gateway.serving.edge import EdgeProtocol
from gateway.serving.limits import EdgeLimits, raise_open_file_limit
from gateway.serving.shutdown import serve

__all__ = [
    "PROTOCOL",
    "EdgeLimits",
    "EdgeProtocol",
    "GatewayHttpProtocol",
    "protocol",
    "raise_open_file_limit",
    "serve",
]

PROTOCOL: type[EdgeProtocol] = GatewayHttpProtocol  # EdgeProtocol: uvicorn's own request cycle


def protocol(limits: EdgeLimits, protocol_class: type[EdgeProtocol] = PROTOCOL) -> Callable[..., Any]:
    """What uvicorn's `http` option takes: the protocol class with `limits` bound. A partial of a module-level
    class and a frozen dataclass, so that it pickles: with `--workers N` uvicorn hands it to each worker."""
    return functools.partial(protocol_class, limits=limits)
