"""Serving an ASGI app with uvicorn on a loopback port, in a thread, for as long as a test needs it."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp

STARTUP_SECONDS = 10.0


GATEWAY = str(Path(sys.executable).parent / "gateway")
START_SECONDS = 60.0  # a loaded 2-core host: a `--workers N` worker alone has taken over 5 s to import


def clean_env(**variables: str) -> dict[str, str]:
    """The process environment without any gateway setting, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT", "TMPDIR")}
    return {**env, **variables}


@dataclass
class GatewayProcess:
    """A `gateway serve` process, its URL and its log."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self, sig: signal.Signals = signal.SIGTERM, *, within: float = 30.0) -> float:
        """Sends `sig`; returns how long the process took to exit (killed, and the test failed, past `within`)."""
        began = time.monotonic()
        self.process.send_signal(sig)
        try:
            self.process.wait(within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"still running {within} s after {sig.name}:\n{self.log.read_text()}"
            ) from None
        return time.monotonic() - began


@contextmanager
def gateway_process(
    cwd: Path,
    env: dict[str, str],
    *args: str,
    log_name: str = "serve.log",
    gateway: Sequence[str] = (GATEWAY,),
    preexec_fn: Callable[[], Any] | None = None,
) -> Iterator[GatewayProcess]:
    """`gateway serve` as a real process in `cwd`, once it answers; killed at the end if still running (a test
    that wants it stopped otherwise stops it itself). `gateway` is the command that runs the `gateway` executable:
    this venv's by default, or another install's (tests/packaging: the installed wheel's, as an unprivileged user);
    `preexec_fn` runs in the child before it starts (limits, say)."""
    port = free_port()
    log = cwd / log_name
    with log.open("w") as output:
        process = subprocess.Popen(
            [*gateway, "serve", "--port", str(port), *args],
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
            start_new_session=True,  # its own process group: the workers of `--workers N` with it
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url, process, log)
        yield GatewayProcess(process, url, log)
    finally:
        # The whole group: killing only the supervisor of `--workers N` (a test failed midway) left its workers
        # serving, orphaned, for the rest of the run.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def serving(
    cwd: Path,
    *args: str,
    env: dict[str, str],
    log_name: str = "serve.log",
    gateway: Sequence[str] = (GATEWAY,),
) -> Iterator[str]:
    """`gateway serve` as a real process in `cwd`; yields its URL once it answers, stops it with SIGTERM and
    checks that it shut down cleanly."""
    with gateway_process(cwd, env, *args, log_name=log_name, gateway=gateway) as running:
        try:
            yield running.url
        finally:
            running.stop(signal.SIGTERM, within=15)
    log = running.log.read_text()
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells what stopped it.
    assert running.process.returncode in (0, -signal.SIGTERM), log
    assert "Application shutdown complete" in log


def wait_until_serving(url: str, process: subprocess.Popen[Any], log: Path) -> None:
    """Returns once the `gateway serve` process at `url` answers; fails with its log if it dies or never does."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            httpx.get(f"{url}/health", timeout=1)
            return
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gateway serve did not start:\n{log.read_text()}") from None
            time.sleep(0.1)


def free_port() -> int:
    """A loopback port nothing listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """`with LiveServer(app) as server:` serves `app` at `server.url` until the block ends."""

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        options.setdefault("log_config", None)
        options.setdefault("access_log", False)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", **options))
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def thread_id(self) -> int | None:
        """The server's thread (whose log records are its own), once started."""
        return self._thread.ident

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + STARTUP_SECONDS
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.should_exit = True
        self._thread.join(STARTUP_SECONDS)
        self._socket.close()
        # What the stopped app left behind past its shutdown's bounds (a database connection whose task was cut
        # mid-transaction) is freed now, as `gateway serve`'s exit frees it, not when the collector next runs:
        # a SQLite connection holds the file's write lock until then, and every other gateway of the file fails.
        gc.collect()


def read_all(client: socket.socket) -> bytes:
    """Everything a server sends on a raw socket until it closes (a reset after its answer counts as a close)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := client.recv(65536):
            received += chunk
    return received
