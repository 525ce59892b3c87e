"""How `gateway serve` stops: SIGTERM, SIGINT and SIGHUP all drain (no new connections, in-flight requests get up to
SHUTDOWN_TIMEOUT and are then cut, the app's shutdown runs bounded), and the process is gone within
SHUTDOWN_TIMEOUT + 5 s whatever the database does. uvicorn's server and supervisor, with those signals changed."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Generator
from types import FrameType

from uvicorn import Config, Server
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess

logger = logging.getLogger("gateway.serving")

# uvicorn drains on SIGINT and SIGTERM only; a SIGHUP (a closed terminal, an operator's habit) killed the process
# without a drain or a line, and its supervisor takes it as "restart the workers". Here each one means: stop.
DRAIN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# After the requests' SHUTDOWN_TIMEOUT: the app's own bounded shutdown (its background tasks, the database's close)
# and the interpreter's exit. Past this the process ends itself, under the 5 s promised.
EXIT_GRACE_SECONDS = 4.5
EXIT_FORCED = 1  # the status of a process that had to end itself


def serve(config: Config) -> int:
    """Serves `config` (one process, or `config.workers` under a supervisor) until a signal; the exit status."""
    if config.workers > 1:
        DrainingSupervisor(config, sockets=[config.bind_socket()]).run()
        return 0
    server = DrainingServer(config)
    server.run()
    return 0 if server.started else STARTUP_FAILURE


class DrainingServer(Server):
    """uvicorn's server, draining on each of `DRAIN_SIGNALS`, saying which began it, and exiting 0 once drained
    (uvicorn raises the signal again, so a SIGHUP would still end in a kill), or 1 past the grace."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.drain_signal: str | None = None
        # Set once the requests and the app's shutdown are done: only the event loop's own end is left.
        self.drained = threading.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in DRAIN_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: only note it. The line is logged by `shutdown`, outside the handler.
        self.drain_signal = self.drain_signal or signal.Signals(sig).name
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        timeout = self.config.timeout_graceful_shutdown
        logger.info(
            "%s received: draining (requests in flight get up to %s s), then exiting",
            self.drain_signal or "a stop",
            "unbounded" if timeout is None else f"{timeout:g}",
        )
        if timeout is not None:
            _exit_after(timeout + EXIT_GRACE_SECONDS, drained=self.drained)
        await super().shutdown(sockets)
        self.drained.set()


class DrainingSupervisor(Multiprocess):
    """uvicorn's supervisor of `--workers N`: each of `DRAIN_SIGNALS` drains every worker (each is sent SIGTERM)
    and exits; a worker still there past SHUTDOWN_TIMEOUT and the grace is killed."""

    def handle_int(self) -> None:
        self._drain("SIGINT")

    def handle_term(self) -> None:
        self._drain("SIGTERM")

    def handle_hup(self) -> None:
        self._drain("SIGHUP")

    def _drain(self, name: str) -> None:
        logger.info("%s received: draining the %d workers, then exiting", name, len(self.processes))
        self.should_exit.set()

    def join_all(self) -> None:
        timeout = self.config.timeout_graceful_shutdown
        deadline = None if timeout is None else time.monotonic() + timeout + EXIT_GRACE_SECONDS
        for worker in self.processes:
            worker.process.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                logger.error(
                    "worker [%s] still there %.1f s after the drain began: killed", worker.pid, timeout
                )
                worker.kill()
                worker.process.join()


def _exit_after(seconds: float, *, drained: threading.Event) -> None:
    """Ends the process in `seconds` unless it has ended by then: nothing in the shutdown (a database that does not
    answer, a thread that does not end) may keep it alive past its promise. Once `drained`, only the event loop's
    own end was left (tasks abandoned on a partitioned database, cancelled): the drain succeeded, the status is 0."""

    def exit_now() -> None:
        if drained.is_set():
            logger.warning(
                "the event loop's end still running %.1f s after the shutdown began: exiting now", seconds
            )
            os._exit(0)
        logger.error("shutdown still running %.1f s after it began: exiting now", seconds)
        os._exit(EXIT_FORCED)

    timer = threading.Timer(seconds, exit_now)
    timer.daemon = True
    timer.start()
