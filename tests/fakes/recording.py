"""What a fake upstream saw: each request's method, path, headers and body, for tests to assert on."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    raw_headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Recorder:
    """Requests seen, plus named moments (monotonic times) the fake marks, shared with the test thread."""

    requests: list[RecordedRequest] = field(default_factory=list)
    moments: dict[str, float] = field(default_factory=dict)
    _marked: threading.Condition = field(default_factory=threading.Condition)

    async def record(self, request: Request) -> RecordedRequest:
        body = await request.body()
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers={k.lower(): v for k, v in request.headers.items()},
            raw_headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
            body=body,
        )
        self.requests.append(recorded)
        return recorded

    @property
    def last(self) -> RecordedRequest:
        assert self.requests, "the fake upstream saw no request"
        return self.requests[-1]

    def mark(self, moment: str) -> None:
        with self._marked:
            self.moments[moment] = time.monotonic()
            self._marked.notify_all()

    def wait_for(self, moment: str, timeout: float) -> float | None:
        """The time `moment` was marked, waiting up to `timeout` seconds for it; None if it never was."""
        with self._marked:
            self._marked.wait_for(lambda: moment in self.moments, timeout=timeout)
            return self.moments.get(moment)

    def reset(self) -> None:
        with self._marked:
            self.requests.clear()
            self.moments.clear()
