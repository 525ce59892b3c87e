"""The edge's limits on the real `gateway serve`, over raw sockets: a slowloris flood past a low open-file limit, a
64 MiB header, a 300 MiB body refused with 413, and the limits reaching every worker of `--workers 2`."""

from __future__ import annotations

import contextlib
import resource
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.serving import (
    clean_env,
    gateway_process,
    read_all,
    serving,
)

OPEN_FILES = 1024


@contextlib.contextmanager
def serving_with_open_files(cwd: Path, open_files: int, env: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """`gateway serve` with its open-file limit (soft and hard) at `open_files`, as `ulimit -n` would set it."""

    def limit_open_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    with gateway_process(cwd, env, preexec_fn=limit_open_files) as gateway:
        try:
            yield gateway.url, gateway.log
            assert gateway.process.poll() is None, gateway.log.read_text()  # nothing crashed
        finally:
            gateway.stop(signal.SIGTERM)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_half_sent_requests_past_the_open_file_limit_leave_room_for_a_legitimate_one(tmp_path: Path) -> None:
    """1,100 connections holding half a request each, against a worker that may open 1,024 files: the oldest
    are closed to make room, and `GET /health` is answered (stock uvicorn: every new connection reset)."""
    env = clean_env(HEADER_TIMEOUT="120")  # the shedding, not the header timeout, is what must hold
    with serving_with_open_files(tmp_path, OPEN_FILES, env) as (url, log):
        flood: list[socket.socket] = []
        try:
            for _ in range(1100):
                client = socket.create_connection(("127.0.0.1", port_of(url)), timeout=10)
                client.sendall(b"GET /health HTTP/1.1\r\nHost: gateway\r\n")
                flood.append(client)
            started = time.monotonic()
            response = httpx.get(f"{url}/health", timeout=10)
            elapsed = time.monotonic() - started
        finally:
            for client in flood:
                client.close()
        assert response.status_code == 200 and elapsed < 5
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        text = log.read_text()
    assert "Traceback" not in text and "Too many open files" not in text, text
    assert "lowered to" in text  # the cap fitted to the open-file limit, said once
    shed_lines = [line for line in text.splitlines() if "to make room" in line]
    assert 1 <= len(shed_lines) <= 3, text  # hundreds shed, a few lines


def test_a_64_mib_header_is_refused_at_once_while_health_keeps_answering(tmp_path: Path) -> None:
    total = 64 * 1024 * 1024
    outcome: dict[str, Any] = {}
    with serving(tmp_path, env=clean_env()) as url:

        def flood() -> None:
            with socket.create_connection(("127.0.0.1", port_of(url)), timeout=30) as client:
                client.sendall(b"GET /health HTTP/1.1\r\nHost: gateway\r\nX-Flood: ")
                sent = 0
                with contextlib.suppress(OSError):
                    while sent < total and not select.select([client], [], [], 0)[0]:
                        sent += client.send(b"a" * 65536)
                outcome["sent"] = sent
                outcome["answer"] = read_all(client)

        sender = threading.Thread(target=flood)
        sender.start()
        times = []
        with httpx.Client(timeout=10) as client:  # its set-up is not what is timed
            for _ in range(5):
                started = time.monotonic()
                assert client.get(f"{url}/health", headers={"connection": "close"}).status_code == 200
                times.append(time.monotonic() - started)
        sender.join(60)
    assert max(times) < 2
    assert outcome["answer"].startswith(b"HTTP/1.1 431 ") and b"connection: close" in outcome["answer"]
    assert outcome["sent"] < total // 8  # what the sockets' buffers took before the refusal came back


def test_a_body_over_max_request_bytes_gets_413_and_the_rest_is_not_read(tmp_path: Path) -> None:
    declared = 300 * 1024 * 1024
    with (
        serving(tmp_path, env=clean_env()) as url,
        socket.create_connection(("127.0.0.1", port_of(url)), timeout=30) as client,
    ):
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % declared
        )
        sent, answer = 0, b""
        with contextlib.suppress(OSError):
            while sent < declared:
                if select.select([client], [], [], 0)[0]:
                    answer = client.recv(65536)
                    break
                sent += client.send(b"x" * 65536)
        answer += read_all(client)  # returns: the server closed the connection
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 413 ") and b"connection: close" in head
    assert sent < declared // 10


def test_the_limits_reach_every_worker(tmp_path: Path) -> None:
    """The settings travel to `--workers 2`'s spawned processes with the protocol (a picklable partial)."""
    with serving(tmp_path, "--workers", "2", env=clean_env(MAX_HEADERS="5")) as url:
        answers = []
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", port_of(url)), timeout=10) as client:
                client.sendall(
                    b"GET /health HTTP/1.1\r\nHost: g\r\n" + b"".join(b"X-%d: v\r\n" % n for n in range(5))
                )
                client.sendall(b"\r\n")
                answers.append(read_all(client)[:13])
        assert httpx.get(f"{url}/health").status_code == 200
    assert set(answers) == {b"HTTP/1.1 431 "}
