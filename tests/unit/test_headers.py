"""Which headers cross the proxy in each direction, and what an upstream is told of the client's way in."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.headers import (
    MAX_REMEMBERED_PEERS,
    ForwardingPolicy,
    TrustedProxies,
    response_headers_for_client,
)

LOOPBACK_PROXY = TrustedProxies([ipaddress.ip_network("127.0.0.1/32")])
SPOOFED = [
    (b"forwarded", b"for=1.2.3.4;proto=https;host=evil.example"),
    (b"x-real-ip", b"1.2.3.4"),
    (b"x-forwarded-for", b"1.2.3.4"),
    (b"X-Forwarded-Host", b"evil.example"),
    (b"x-forwarded-port", b"443"),
    (b"x-forwarded-prefix", b"/admin"),
    (b"x-forwarded-server", b"evil"),
    (b"x-forwarded-proto", b"https"),
    (b"x-forwarded-whatever-next", b"1"),
]


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name.lower() for name, _ in headers]


def test_request_drops_hop_by_hop_credentials_and_connection_listed_headers() -> None:
    headers = [
        (b"Connection", b"keep-alive, X-Hop"),
        (b"X-Hop", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"websocket"),
        (b"Authorization", b"Bearer client"),
        (b"Cookie", b"gw_session=x"),
        (b"Proxy-Authorization", b"Basic x"),
        (b"Host", b"gateway.example"),
        (b"X-Request-ID", b"abc"),
        (b"Expect", b"100-continue"),
        (b"Content-Length", b"999"),  # the pool writes the length of the body it sends
        (b"OpenAI-Organization", b"org"),
        (b"Content-Type", b"application/json"),
    ]

    policy = ForwardingPolicy(forward_openai_org_headers=True)

    assert policy.request_headers(headers, peer="10.0.0.2", scheme="http") == [
        (b"OpenAI-Organization", b"org"),
        (b"Content-Type", b"application/json"),
        (b"x-forwarded-for", b"10.0.0.2"),
        (b"x-forwarded-proto", b"http"),
    ]


def test_an_untrusted_peer_forwarding_claims_are_replaced_by_its_own_address_and_scheme() -> None:
    policy = ForwardingPolicy(LOOPBACK_PROXY)

    sent = policy.request_headers([*SPOOFED, (b"accept", b"*/*")], peer="198.51.100.7", scheme="http")

    assert sent == [
        (b"accept", b"*/*"),
        (b"x-forwarded-for", b"198.51.100.7"),
        (b"x-forwarded-proto", b"http"),
    ]


def test_without_trusted_proxies_even_loopback_is_not_believed() -> None:
    sent = ForwardingPolicy().request_headers(SPOOFED, peer="127.0.0.1", scheme="https")

    assert sent == [(b"x-forwarded-for", b"127.0.0.1"), (b"x-forwarded-proto", b"https")]


def test_a_trusted_proxy_chain_is_extended_with_the_peer_and_its_proto_believed() -> None:
    headers = [
        (b"x-forwarded-for", b"203.0.113.9, 10.1.1.1"),
        (b"x-forwarded-for", b" 10.2.2.2 "),
        (b"x-forwarded-for", b""),
        (b"x-forwarded-proto", b" HTTPS"),
        (b"x-real-ip", b"203.0.113.9"),
        (b"forwarded", b"for=203.0.113.9"),
        (b"x-forwarded-host", b"api.example"),
    ]

    sent = ForwardingPolicy(LOOPBACK_PROXY).request_headers(headers, peer="127.0.0.1", scheme="http")

    assert sent == [
        (b"x-forwarded-for", b"203.0.113.9, 10.1.1.1, 10.2.2.2, 127.0.0.1"),
        (b"x-forwarded-proto", b"https"),
    ]


@pytest.mark.parametrize("claimed", [b"ftp", b"https, http", b"javascript", b""])
def test_a_trusted_proxy_proto_other_than_http_or_https_gives_the_gateway_scheme(claimed: bytes) -> None:
    sent = ForwardingPolicy(LOOPBACK_PROXY).request_headers(
        [(b"x-forwarded-proto", claimed)], peer="127.0.0.1", scheme="http"
    )

    assert sent == [(b"x-forwarded-for", b"127.0.0.1"), (b"x-forwarded-proto", b"http")]


def test_an_unknown_peer_gets_no_forwarded_for_at_all() -> None:
    sent = ForwardingPolicy(LOOPBACK_PROXY).request_headers(
        [(b"x-forwarded-for", b"1.2.3.4")], peer=None, scheme="http"
    )

    assert sent == [(b"x-forwarded-proto", b"http")]


def test_a_connection_listed_forwarded_for_is_not_extended() -> None:
    headers = [(b"connection", b"x-forwarded-for"), (b"x-forwarded-for", b"1.2.3.4")]

    sent = ForwardingPolicy(LOOPBACK_PROXY).request_headers(headers, peer="127.0.0.1", scheme="http")

    assert sent == [(b"x-forwarded-for", b"127.0.0.1"), (b"x-forwarded-proto", b"http")]


def test_openai_org_headers_pass_only_when_the_policy_forwards_them() -> None:
    headers = [(b"OpenAI-Organization", b"org-team"), (b"openai-project", b"proj_alpha")]

    forwarding = ForwardingPolicy(forward_openai_org_headers=True).request_headers(
        headers, peer=None, scheme="http"
    )
    dropping = ForwardingPolicy(forward_openai_org_headers=False).request_headers(
        headers, peer=None, scheme="http"
    )

    assert names(forwarding) == [b"openai-organization", b"openai-project", b"x-forwarded-proto"]
    assert names(dropping) == [b"x-forwarded-proto"]


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("10.0.0.1", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("::ffff:10.0.0.7", True),  # an IPv4 peer on a dual-stack socket
        ("::1", False),
        ("fd00::5", True),
        ("fd01::5", False),
        ("/run/gateway.sock", False),
        ("", False),
    ],
)
def test_trusted_proxies_match_addresses_and_networks(peer: str, trusted: bool) -> None:
    proxies = TrustedProxies([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/16")])

    assert proxies.trusts(peer) is trusted
    assert proxies.trusts(peer) is trusted  # the remembered decision is the same


def test_trusted_proxies_remember_a_bounded_number_of_peers() -> None:
    proxies = TrustedProxies([ipaddress.ip_network("10.0.0.0/8")])

    for n in range(MAX_REMEMBERED_PEERS * 3):
        assert proxies.trusts(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
        assert not proxies.trusts(f"192.0.{n // 256 % 256}.{n % 256}")

    assert len(proxies._decided) <= MAX_REMEMBERED_PEERS


def test_response_drops_hop_by_hop_cookies_and_the_upstream_own_origin_policies() -> None:
    headers = [
        (b"Content-Type", b"text/event-stream"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"close"),
        (b"Set-Cookie", b"__cf_bm=x"),
        (b"Alt-Svc", b'h3=":443"; ma=86400'),
        (b"Strict-Transport-Security", b"max-age=31536000; includeSubDomains; preload"),
        (b"Date", b"Mon, 23 Nov 2026 10:00:00 GMT"),
        (b"X-Request-ID", b"req_1"),
        (b"OpenAI-Processing-Ms", b"12"),
    ]

    assert response_headers_for_client(headers) == [
        (b"content-type", b"text/event-stream"),
        (b"x-upstream-request-id", b"req_1"),
        (b"openai-processing-ms", b"12"),
    ]


def test_the_client_address_is_the_peer_unless_the_peer_is_a_trusted_proxy() -> None:
    proxies = TrustedProxies([ipaddress.ip_network("10.0.0.0/8")])
    chain = [(b"X-Forwarded-For", b"198.51.100.1, 203.0.113.5"), (b"x-forwarded-for", b"10.0.0.9")]

    assert proxies.client_address("192.0.2.4", chain) == "192.0.2.4"  # not a proxy: its claims are ignored
    assert proxies.client_address("10.0.0.2", chain) == "203.0.113.5"  # the nearest hop that is not a proxy
    assert proxies.client_address("10.0.0.2", [(b"x-forwarded-for", b"10.0.0.3, 10.0.0.4")]) == "10.0.0.3"
    assert proxies.client_address("10.0.0.2", []) == "10.0.0.2"
    assert proxies.client_address(None, chain) is None
