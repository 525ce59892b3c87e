"""What can go wrong talking to an upstream, by the phase it went wrong in (the proxy maps phases to statuses).

UpstreamError
├── ConnectFailed         no connection: refused, unreachable, or none made in time
├── PoolTimeout           every connection of the pool was busy for longer than the pool timeout
├── HeadersTimeout        connected and sent, but no response headers within the read timeout
├── BrokenOff             the connection closed or sent garbage before the response was complete
│   └── HeadersTooLarge   the response's status line and headers went past 64 KiB
└── BodyTimeout           the response started, then nothing more came within the read timeout

After `ConnectFailed` or `PoolTimeout` the upstream never saw the request; after the others it may have, and the
pool has not sent it again. `BrokenOff` or `BodyTimeout` from `Response.read_chunk` means the body is incomplete:
a body ends cleanly only as its framing says (a FIN ends a close-delimited body; an RST never ends any).
"""

from __future__ import annotations


class UpstreamError(Exception):
    """The upstream exchange failed; `str()` says how, for the logs (never any header or body)."""


class ConnectFailed(UpstreamError):
    pass


class PoolTimeout(UpstreamError):
    pass


class HeadersTimeout(UpstreamError):
    pass


class BrokenOff(UpstreamError):
    pass


class HeadersTooLarge(BrokenOff):
    pass


class BodyTimeout(UpstreamError):
    pass
