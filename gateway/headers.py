"""Which headers cross the proxy: hop-by-hop and credential headers stay behind, in both directions."""

from __future__ import annotations

from collections.abc import Iterable

RawHeaders = list[tuple[bytes, bytes]]

# RFC 9110 section 7.6.1, plus the de facto ones; they describe one connection, not the message.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# The client's credentials are for the gateway; the upstream gets the gateway's own key instead.
CLIENT_CREDENTIALS = frozenset({b"authorization", b"cookie", b"x-usage-key", b"x-api-key", b"api-key"})
# Set again by the proxy: for the upstream's address, on the client's behalf, and the gateway's request id.
# `Expect: 100-continue` was answered by our own server already; the upstream gets the body straight away.
REQUEST_REPLACED = frozenset(
    {b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id", b"expect"}
)
# The upstream's cookies would land on the gateway's origin (and could shadow its session cookie);
# the server stamps its own date; the request id is the gateway's (the upstream's is kept aside).
RESPONSE_DROPPED = frozenset({b"set-cookie", b"date", b"server", b"x-request-id"})
UPSTREAM_REQUEST_ID = b"x-upstream-request-id"


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in `Connection`, which are hop-by-hop for this message only."""
    return frozenset(
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
        if token.strip()
    )


_REQUEST_DROPPED = HOP_BY_HOP | CLIENT_CREDENTIALS | REQUEST_REPLACED
_RESPONSE_DROPPED = HOP_BY_HOP | RESPONSE_DROPPED


def request_headers_for_upstream(headers: RawHeaders) -> RawHeaders:
    """The client's headers an upstream may see: no hop-by-hop, no credentials, no forwarding headers."""
    dropped = _REQUEST_DROPPED | tokens if (tokens := connection_tokens(headers)) else _REQUEST_DROPPED
    return [(name, value) for name, value in headers if name.lower() not in dropped]


def response_headers_for_client(headers: RawHeaders) -> RawHeaders:
    """The upstream's headers the client may see; the upstream's request id is renamed, not lost."""
    dropped = _RESPONSE_DROPPED | tokens if (tokens := connection_tokens(headers)) else _RESPONSE_DROPPED
    kept: RawHeaders = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"x-request-id":
            kept.append((UPSTREAM_REQUEST_ID, value))
        elif lowered not in dropped:
            kept.append((lowered, value))
    return kept


def forwarded_for(headers: RawHeaders, client_host: str | None) -> bytes | None:
    """`X-Forwarded-For` with the client's address appended to the chain the client sent."""
    previous = b", ".join(value for name, value in headers if name.lower() == b"x-forwarded-for")
    if client_host is None:
        return previous or None
    host = client_host.encode("latin-1")
    return previous + b", " + host if previous else host
