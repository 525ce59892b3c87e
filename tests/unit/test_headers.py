"""Which headers cross the proxy in each direction."""

from __future__ import annotations

from gateway.headers import forwarded_for, request_headers_for_upstream, response_headers_for_client


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
        (b"OpenAI-Organization", b"org"),
        (b"Content-Type", b"application/json"),
    ]

    assert request_headers_for_upstream(headers) == [
        (b"OpenAI-Organization", b"org"),
        (b"Content-Type", b"application/json"),
    ]


def test_response_drops_hop_by_hop_and_cookies_and_keeps_the_upstream_request_id_aside() -> None:
    headers = [
        (b"Content-Type", b"text/event-stream"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"close"),
        (b"Set-Cookie", b"__cf_bm=x"),
        (b"Date", b"Mon, 23 Nov 2026 10:00:00 GMT"),
        (b"X-Request-ID", b"req_1"),
        (b"OpenAI-Processing-Ms", b"12"),
    ]

    assert response_headers_for_client(headers) == [
        (b"content-type", b"text/event-stream"),
        (b"x-upstream-request-id", b"req_1"),
        (b"openai-processing-ms", b"12"),
    ]


def test_forwarded_for_appends_the_peer_to_the_chain() -> None:
    assert forwarded_for([], "10.0.0.2") == b"10.0.0.2"
    assert (
        forwarded_for([(b"x-forwarded-for", b"1.1.1.1, 2.2.2.2")], "10.0.0.2")
        == b"1.1.1.1, 2.2.2.2, 10.0.0.2"
    )
    assert forwarded_for([(b"X-Forwarded-For", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2")], None) == (
        b"1.1.1.1, 2.2.2.2"
    )
    assert forwarded_for([], None) is None
