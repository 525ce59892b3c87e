"""A paid request is never sent twice: an upstream that reads a POST on a reused connection and then hangs up
without answering may have acted on it, so the gateway answers 502 instead of sending it again (API.md)."""

from __future__ import annotations

import io
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.conftest import GatewayFactory

MESSAGES = [{"role": "user", "content": "Hi"}]
ANSWER = b'{"id":"c","object":"chat.completion","model":"m","choices":[],"usage":{"prompt_tokens":1}}'
TRIALS = 3


class HangUpOnSecond:
    """An upstream that answers the first request of each connection, then reads the second and hangs up
    (a FIN, or an RST when `reset`), counting every request it read."""

    def __init__(self, *, reset: bool) -> None:
        self.reset = reset
        self.requests: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._converse, args=(connection,), daemon=True).start()

    def _converse(self, connection: socket.socket) -> None:
        with connection:
            reader = connection.makefile("rb")
            assert isinstance(reader, io.BufferedReader)
            for answered in (True, False):
                request = _read_request(reader)
                if request is None:
                    return
                self.requests.append(request)
                if answered:
                    connection.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\n\r\n%b" % (len(ANSWER), ANSWER)
                    )
            if self.reset:
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    @contextmanager
    def running(self) -> Iterator[HangUpOnSecond]:
        self._thread.start()
        try:
            yield self
        finally:
            self._listener.close()


def _read_request(reader: io.BufferedReader) -> bytes | None:
    """One request with its Content-Length body, or None when the connection ended."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline()
        if not line:
            return None
        head += line
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + reader.read(length)


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_a_post_read_on_a_reused_connection_then_hung_up_on_is_502_and_sent_once(
    start_gateway: GatewayFactory, reset: bool
) -> None:
    upstream = HangUpOnSecond(reset=reset)
    with upstream.running(), start_gateway(OPENAI_BASE_URL=upstream.url) as gateway:
        for trial in range(TRIALS):
            first = httpx.post(
                f"{gateway.url}/v1/chat/completions", json={"model": "m", "messages": MESSAGES}, timeout=10
            )
            assert first.status_code == 200, first.text
            second = httpx.post(
                f"{gateway.url}/v1/chat/completions",
                json={"model": "m", "messages": MESSAGES, "user": f"second-{trial}"},
                timeout=10,
            )
            assert second.status_code == 502, second.text
            assert second.json()["error"]["code"] == "upstream_unavailable"

    # Each second request reached the upstream exactly once: it was read, so it was never sent again.
    seconds = [request for request in upstream.requests if b'"second-' in request]
    assert len(seconds) == TRIALS, [request.split(b"\r\n", 1)[0] for request in upstream.requests]
    assert len(set(seconds)) == TRIALS
    assert len(upstream.requests) == 2 * TRIALS
