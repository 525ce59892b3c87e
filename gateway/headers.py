"""Which headers cross the proxy: hop-by-hop, credential and forwarding headers stay behind, in both directions.

What an upstream learns of the client's way to it is the gateway's to say (`ForwardingPolicy`): a client can write
any `X-Forwarded-For` it likes, so only a peer the operator trusts (`TRUSTED_PROXIES`) has its chain believed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

RawHeaders = list[tuple[bytes, bytes]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

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
# Set again by the proxy: for the upstream's address, the gateway's request id, and the length of the body it
# sends (the pool writes it). `Expect: 100-continue` was answered by our own server already; the upstream gets
# the body straight away.
REQUEST_REPLACED = frozenset({b"host", b"x-request-id", b"content-length", b"expect"})
# Claims about the way a request came (RFC 7239, nginx's real-ip, every de facto X-Forwarded-* one): as a client
# sends them they are whatever it wants an upstream to believe, so none passes; the gateway writes its own.
FORWARDING = frozenset({b"forwarded", b"x-real-ip"})
FORWARDING_PREFIX = b"x-forwarded-"
# The client's choice among the operator's OpenAI organizations and projects (billing, and what a key may reach).
OPENAI_ORG_HEADERS = frozenset({b"openai-organization", b"openai-project"})
# The upstream's cookies would land on the gateway's origin (and could shadow its session cookie); its Alt-Svc and
# HSTS speak for the upstream's host, not the gateway's (an HTTP/3 endpoint we do not serve, HTTPS pinned on an
# origin whose operator decides that); the server stamps its own date; the request id is the gateway's (the
# upstream's is kept aside).
RESPONSE_DROPPED = frozenset(
    {b"set-cookie", b"alt-svc", b"strict-transport-security", b"date", b"server", b"x-request-id"}
)
UPSTREAM_REQUEST_ID = b"x-upstream-request-id"
# Peers whose trust was decided, kept so that a request costs a dict lookup; forgotten all at once when full.
MAX_REMEMBERED_PEERS = 1024
# The schemes an `X-Forwarded-Proto` from a trusted proxy may name (as uvicorn's proxy headers, for HTTP).
FORWARDED_SCHEMES = frozenset({b"http", b"https"})
_SCHEME_BYTES = {"http": b"http", "https": b"https"}


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in `Connection`, which are hop-by-hop for this message only."""
    return frozenset(
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
        if token.strip()
    )


class TrustedProxies:
    """The peers whose `X-Forwarded-For` and `X-Forwarded-Proto` are believed: addresses and networks, as
    uvicorn's `forwarded_allow_ips` or nginx's `set_real_ip_from`. An IPv4 peer seen on a dual-stack socket
    (`::ffff:10.0.0.1`) is matched as the IPv4 address it is."""

    __slots__ = ("_decided", "networks")

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        self.networks = tuple(networks)
        self._decided: dict[str, bool] = {}

    def trusts(self, peer: str) -> bool:
        """Whether `peer` (a TCP peer's address as the server reports it) is one of the trusted proxies."""
        if not self.networks:
            return False
        decided = self._decided.get(peer)
        if decided is None:
            if len(self._decided) >= MAX_REMEMBERED_PEERS:
                self._decided.clear()
            decided = self._decided[peer] = self._matches(peer)
        return decided

    def client_address(self, peer: str | None, headers: RawHeaders) -> str | None:
        """The client's address: the TCP peer, or, when the peer is a trusted proxy, the nearest address of its
        `X-Forwarded-For` chain that is not itself one (nginx's `real_ip_recursive`): what a proxy in front
        appended, which the client cannot forge."""
        if peer is None or not self.trusts(peer):
            return peer
        hops = [
            hop.strip()
            for name, value in headers
            if name.lower() == b"x-forwarded-for"
            for hop in value.decode("latin-1").split(",")
            if hop.strip()
        ]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return hop
        return hops[0] if hops else peer

    def _matches(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False  # not an IP peer (a Unix socket's path): nothing to match
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


class ForwardingPolicy:
    """Which of a client's request headers an upstream gets, and the forwarding headers the gateway adds.

    Built once per route from the settings; `request_headers` is on every proxied request's path. The
    upstream gets `X-Forwarded-For` naming the TCP peer, after the client's chain only when the peer is a
    trusted proxy (nginx's `proxy_add_x_forwarded_for`), and `X-Forwarded-Proto`: a trusted proxy's `http` or
    `https`, else the scheme the gateway was reached by.
    """

    __slots__ = ("_dropped", "forward_openai_org_headers", "trusted_proxies")

    def __init__(
        self, trusted_proxies: TrustedProxies | None = None, *, forward_openai_org_headers: bool = False
    ) -> None:
        self.trusted_proxies = trusted_proxies or TrustedProxies()
        self.forward_openai_org_headers = forward_openai_org_headers
        dropped = HOP_BY_HOP | CLIENT_CREDENTIALS | REQUEST_REPLACED | FORWARDING
        self._dropped = dropped if forward_openai_org_headers else dropped | OPENAI_ORG_HEADERS

    def request_headers(self, headers: RawHeaders, *, peer: str | None, scheme: str) -> RawHeaders:
        """The client's headers an upstream may see, then the gateway's `X-Forwarded-For` (none when the peer is
        unknown: there is no address to vouch for) and `X-Forwarded-Proto`. `peer` and `scheme` are the scope's."""
        dropped = self._dropped | tokens if (tokens := connection_tokens(headers)) else self._dropped
        kept: RawHeaders = []
        chain: list[bytes] = []
        proto: bytes | None = None
        for name, value in headers:
            lowered = name.lower()
            if lowered in dropped:
                continue
            if lowered.startswith(FORWARDING_PREFIX):
                if lowered == b"x-forwarded-for" and (hops := value.strip(b" \t,")):
                    chain.append(hops)
                elif lowered == b"x-forwarded-proto":
                    proto = value
                continue
            kept.append((name, value))
        trusted = peer is not None and self.trusted_proxies.trusts(peer)
        if peer is not None:
            address = peer.encode("latin-1")
            kept.append((b"x-forwarded-for", b", ".join((*chain, address)) if trusted and chain else address))
        if trusted and proto is not None and (claimed := proto.strip().lower()) in FORWARDED_SCHEMES:
            kept.append((b"x-forwarded-proto", claimed))
        else:
            kept.append((b"x-forwarded-proto", _SCHEME_BYTES.get(scheme) or scheme.encode("latin-1")))
        return kept


def response_headers_for_client(headers: RawHeaders) -> RawHeaders:
    """The upstream's headers the client may see; the upstream's request id is renamed, not lost."""
    tokens = connection_tokens(headers)
    dropped = _RESPONSE_DROPPED | tokens if tokens else _RESPONSE_DROPPED
    kept: RawHeaders = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"x-request-id":
            kept.append((UPSTREAM_REQUEST_ID, value))
        elif lowered not in dropped:
            kept.append((lowered, value))
    return kept


_RESPONSE_DROPPED = HOP_BY_HOP | RESPONSE_DROPPED
