"""A TCP relay on a loopback port, in a thread of its own, that a test can cut (an outage) and restore.

`cut()` closes the listening socket, so new connections are refused, and aborts every open connection on both
sides, as a database that went away would look to its clients. `restore()` listens on the same port again.

`partition()` is the harder fault, a network that drops packets: every open connection stays open but nothing
crosses it any more, either way, and (unless `new=False`) new connections are accepted and then just as silent,
so a client waits until its own timeout. `heal()` relays new connections again; the ones silenced stay silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")
CHUNK = 64 * 1024
CALL_SECONDS = 10.0


class TcpProxy:
    """`with TcpProxy("127.0.0.1", 5432) as proxy:` relays `127.0.0.1:proxy.port` to the target."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._silenced_new = False
        self._lines: set[_Line] = set()

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        try:
            self.restore()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def is_listening(self) -> bool:
        return self._server is not None

    def restore(self) -> None:
        """Listen (again, on the same port once one was picked)."""
        self._call(self._listen())

    def cut(self) -> int:
        """Refuse new connections and drop every open one; returns how many connections were dropped."""
        return self._call(self._cut())

    def partition(self, *, new: bool = True) -> int:
        """Silence every open connection (and, with `new`, those accepted from now on); returns how many."""
        return self._call(self._partition(new))

    def heal(self) -> None:
        """Relay new connections again."""
        self._call(self._heal())

    def close(self) -> None:
        """Cut, then stop the thread and its loop."""
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CALL_SECONDS)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(CALL_SECONDS)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._relay, "127.0.0.1", self.port, reuse_address=True, limit=CHUNK
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> int:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        dropped = len(self._writers)
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        return dropped // 2

    async def _partition(self, new: bool) -> int:
        self._silenced_new = new
        for line in self._lines:
            line.silent = True
        return len(self._lines)

    async def _heal(self) -> None:
        self._silenced_new = False

    async def _shutdown(self) -> None:
        await self._cut()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        self._writers.add(client_writer)
        upstream_writer: asyncio.StreamWriter | None = None
        line = _Line(silent=self._silenced_new)
        self._lines.add(line)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port, limit=CHUNK
            )
            self._writers.add(upstream_writer)
            if self._server is None:  # cut while connecting
                return
            await asyncio.gather(
                _pump(client_reader, upstream_writer, line), _pump(upstream_reader, client_writer, line)
            )
        except OSError:
            pass
        finally:
            self._lines.discard(line)
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.transport.abort()
            self._tasks.discard(task)


class _Line:
    """One relayed connection; `silent` drops what crosses it, as a partitioned network would."""

    def __init__(self, *, silent: bool) -> None:
        self.silent = silent


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: _Line) -> None:
    """Copy until either side is gone, then close both directions (the other pump ends with it)."""
    try:
        while data := await reader.read(CHUNK):
            if line.silent:
                continue
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.transport.abort()
