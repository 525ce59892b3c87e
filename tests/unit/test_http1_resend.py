"""When `gateway.http1` sends a request again, and when it does not: the upstream must see each request once.

A request goes out again only when none of it was written (the idle connection turned out closed); once it is
written, an upstream that closes or resets without answering may have acted on it, and the user gets `BrokenOff`.
Idle connections are checked for the upstream's FIN or RST before reuse, and closed by a timer at their keep-alive.
The races here depend on how a loop orders its callbacks: each runs on asyncio's loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Iterator

import pytest

from gateway.http1 import BrokenOff
from tests.unit.scripted_upstream import (
    LOOPS,
    Peer,
    Upstream,
    get_text,
    ok,
    pool_to,
    read_all,
    run_on,
)

TRIALS = 40


def end(peer: Peer, how: str) -> None:
    """The upstream ends the connection: a FIN (a clean close), or an RST (as a crash or a middlebox does)."""
    if how == "rst":
        peer.reset()
    else:
        peer.writer.close()


# A request the upstream read is never sent again.


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("loop", LOOPS)
def test_post_read_then_unanswered_on_a_reused_connection_is_seen_once(loop: str, how: str) -> None:
    """The issue's race, replayed many times: the upstream reads a POST on a kept-alive connection, then closes or
    resets it without answering (at once, or a little later). Every time the user gets `BrokenOff`, and the
    upstream has seen each POST exactly once: a paid completion is never sent twice."""

    async def handler(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            if request.target.startswith(b"/warm"):
                peer.send(ok())
                continue
            trial = int(request.target.rsplit(b"/", 1)[1])
            await asyncio.sleep(trial % 3 * 0.001)  # at once, or after the request had time to settle
            end(peer, how)
            return

    async def scenario() -> None:
        async with Upstream(handler) as upstream, pool_to(upstream.origin) as pool:
            for trial in range(TRIALS):
                assert await get_text(pool, b"/warm") == b"hello"
                with pytest.raises(BrokenOff):
                    await pool.request(b"POST", b"/pay/%d" % trial, [], b'{"model": "m"}')
            seen = [request.target for peer in upstream.peers for request in peer.requests]
        for trial in range(TRIALS):
            assert seen.count(b"/pay/%d" % trial) == 1

    run_on(loop, scenario())


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("loop", LOOPS)
def test_upstream_dropping_connections_as_requests_arrive_never_sees_one_twice(loop: str, how: str) -> None:
    """The race with every timing at once: after each answer the upstream waits a moment, reads the next request
    if it has come by then, and ends the connection without answering it. Each request is either answered (the
    upstream saw it once) or `BrokenOff` (seen once or never); none is ever seen twice."""

    async def handler(peer: Peer) -> None:
        request = await peer.read_request()
        if request is None:
            return
        peer.send(ok(request.target))
        await peer.drain()
        trial = int(request.target[1:])
        await asyncio.sleep(trial % 4 * 0.0005)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(peer.read_request(), trial % 3 * 0.001)
        end(peer, how)

    async def scenario() -> None:
        answered: list[bytes] = []
        async with Upstream(handler) as upstream, pool_to(upstream.origin) as pool:
            for trial in range(TRIALS):
                target = b"/%d" % trial
                with contextlib.suppress(BrokenOff):
                    response = await pool.request(b"POST", target, [], b"payload")
                    assert await read_all(response) == target
                    response.release()
                    answered.append(target)
                await asyncio.sleep(trial % 5 * 0.0005)
            seen = [request.target for peer in upstream.peers for request in peer.requests]
        assert max(seen.count(target) for target in seen) == 1
        assert all(target in seen for target in answered)
        assert len(answered) >= TRIALS // 8  # a request the upstream has not read is not lost for nothing

    run_on(loop, scenario())


# An idle connection found dead before anything is written: the request goes out on a new one, safely.


@contextlib.contextmanager
def listening() -> Iterator[socket.socket]:
    """A raw listening socket on loopback, for an upstream whose FIN or RST the test sends at an exact moment."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    try:
        yield listener
    finally:
        listener.close()


async def accept_and_answer(listener: socket.socket, body: bytes) -> tuple[socket.socket, bytes]:
    """Accept one connection, read one request head (and a small body after it), answer it; the socket stays
    open for the test to end."""
    loop = asyncio.get_running_loop()
    conn, _ = await loop.sock_accept(listener)
    conn.setblocking(False)
    received = b""
    while b"\r\n\r\n" not in received:
        received += await loop.sock_recv(conn, 65536)
    head, _, rest = received.partition(b"\r\n\r\n")
    length = next(
        (int(line[15:]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    while len(rest) < length:
        rest += await loop.sock_recv(conn, 65536)
    await loop.sock_sendall(conn, ok(body))
    return conn, head + b"\r\n\r\n" + rest


async def rest_of(conn: socket.socket) -> bytes:
    """What else the client sends on `conn` until it closes it."""
    loop = asyncio.get_running_loop()
    received = b""
    while True:
        try:
            data = await asyncio.wait_for(loop.sock_recv(conn, 65536), 2)
        except ConnectionError:
            return received
        if not data:
            return received
        received += data


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("loop", LOOPS)
def test_idle_connection_ended_just_before_the_next_request_is_not_written_to(loop: str, how: str) -> None:
    """The upstream ends an idle connection and the next request starts in the same instant, before the loop has
    run again (so before the connection's protocol could hear of it). The FIN is a half-close (`shutdown`), after
    which the upstream could still read: the request must not arrive there, but on a new connection, whole."""

    async def scenario() -> None:
        with listening() as listener:
            port = listener.getsockname()[1]
            async with pool_to(f"http://127.0.0.1:{port}") as pool:
                first = asyncio.ensure_future(get_text(pool, b"/1"))
                conn, _ = await accept_and_answer(listener, b"first")
                assert await first == b"first"
                await asyncio.sleep(0.01)  # settled: the connection is idle in the pool
                second = asyncio.ensure_future(accept_and_answer(listener, b"second"))
                await asyncio.sleep(0)  # it waits in accept
                if how == "rst":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    conn.close()
                else:
                    conn.shutdown(socket.SHUT_WR)
                response = await pool.request(b"POST", b"/2", [], b"payload")  # no await in between
                assert await read_all(response) == b"second"
                response.release()
                new, received = await second
                assert received.startswith(b"POST /2 HTTP/1.1\r\n")
                assert received.endswith(b"\r\ncontent-length: 7\r\n\r\npayload")
                if how == "fin":
                    assert await rest_of(conn) == b""  # nothing of the request on the old connection
                    conn.close()
                new.close()

    run_on(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_waiter_handed_a_connection_the_upstream_just_ended_gets_a_new_one(loop: str) -> None:
    """At the connection limit, a released connection goes straight to the request waiting for one; if the
    upstream ended it as it was released, the waiting request is sent on a new connection instead."""

    async def scenario() -> None:
        with listening() as listener:
            port = listener.getsockname()[1]
            async with pool_to(f"http://127.0.0.1:{port}", max_connections=1) as pool:
                first = asyncio.ensure_future(pool.request(b"GET", b"/1", [], None))
                conn, _ = await accept_and_answer(listener, b"first")
                response = await first
                waiting = asyncio.ensure_future(pool.request(b"POST", b"/2", [], b"payload"))
                await asyncio.sleep(0.01)
                assert not waiting.done()
                second = asyncio.ensure_future(accept_and_answer(listener, b"second"))
                await asyncio.sleep(0)
                assert await read_all(response) == b"first"
                conn.shutdown(socket.SHUT_WR)
                response.release()
                answer = await asyncio.wait_for(waiting, 2)
                assert await read_all(answer) == b"second"
                answer.release()
                new, received = await second
                assert received.startswith(b"POST /2 HTTP/1.1\r\n")
                assert await rest_of(conn) == b""
                conn.close()
                new.close()

    run_on(loop, scenario())


# Idle connections are closed by a timer.


async def test_idle_connection_is_closed_at_its_keepalive_without_another_request() -> None:
    """An idle connection past `keepalive_seconds` is closed by the pool's timer: the upstream sees it end even
    though no request comes to find it stale."""
    async with (
        Upstream(lambda peer: answer_until_eof(peer)) as upstream,
        pool_to(upstream.origin, keepalive_seconds=0.2) as pool,
    ):
        assert await get_text(pool, b"/1") == b"hello"
        await asyncio.wait_for(upstream.peers[0].eof.wait(), 3)
        assert await get_text(pool, b"/2") == b"hello"  # the pool goes on, on a new connection
    assert upstream.accepted == 2


async def test_keepalive_timer_closes_each_idle_connection_at_its_own_time() -> None:
    """Two connections go idle at different times: the first is closed at its keep-alive while the second is
    still in use, and the second only once it has been idle as long."""
    async with (
        Upstream(lambda peer: answer_until_eof(peer)) as upstream,
        pool_to(upstream.origin, keepalive_seconds=0.3) as pool,
    ):
        early = await pool.request(b"GET", b"/early", [], None)
        late = await pool.request(b"GET", b"/late", [], None)
        assert await read_all(early) == b"hello"
        early.release()
        await asyncio.wait_for(upstream.peers[0].eof.wait(), 3)
        assert not upstream.peers[1].eof.is_set()  # in use: not the timer's to close
        assert await read_all(late) == b"hello"
        late.release()
        await asyncio.sleep(0.1)
        assert not upstream.peers[1].eof.is_set()  # idle for less than its keep-alive
        await asyncio.wait_for(upstream.peers[1].eof.wait(), 3)


async def test_connection_reused_within_its_keepalive_is_not_closed_by_the_timer() -> None:
    """A connection reused again and again, never idle for its whole keep-alive, stays open: the timer goes by
    when each connection went idle, not when the first one did."""
    async with (
        Upstream(lambda peer: answer_until_eof(peer)) as upstream,
        pool_to(upstream.origin, keepalive_seconds=0.25) as pool,
    ):
        for index in range(12):
            assert await get_text(pool, b"/%d" % index) == b"hello"
            await asyncio.sleep(0.05)
        assert not upstream.peers[0].eof.is_set()
    assert upstream.accepted == 1


async def answer_until_eof(peer: Peer) -> None:
    while await peer.read_request() is not None:
        peer.send(ok())
