"""Usage capture in the chain: watch the response go by, then hand the recorder one row, whatever happened.

The body is observed, never held: each chunk goes on to the client as it came. The row is made (by
`gateway.usage.rows`, as an agent turn's is) and recorded as the last body chunk passes, before it goes on: the
recorder journals it, so that no client has a complete answer whose row a crash could lose. Otherwise it is made in
`finally`, so an error, a client that went away (recorded as 499, with the usage seen so far) or a cancelled task
is still recorded. A request whose row the recorder could not keep is refused (503 `usage_unavailable`) before it
starts. A `GatewayError` gives the row its status and its code as
the row's `error`, also when it was raised after the response started: an upstream answer that broke off is 502
`upstream_incomplete`, with the tokens seen before the break.

On the chains whose rows carry the request's parameters (model, max tokens, temperature, top_p), this step reads
the JSON body itself (bounded, parsed once) and hands it down on the context for the body rewrite: a body refused
(413, `invalid_json`) or never finished is recorded like any other request, and nothing below is relied on to
produce what is recorded here. A `model` that its column cannot hold (a NUL, a lone surrogate, past its length)
is refused here (400), before any upstream bills for it: recorded cut or replaced, it would name another model.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.context import RequestContext
from gateway.db.models import UsageEvent
from gateway.errors import GatewayError, InternalError, UsageUnavailableError
from gateway.fields import check_text
from gateway.middleware.rewrite import read_json_body
from gateway.usage.observers import ObservedUsage, ResponseObserver, observer_for
from gateway.usage.pricing import PriceTable
from gateway.usage.recorder import UsageRecord, UsageRecorder
from gateway.usage.rows import Outcome, usage_row


class UsageMiddleware:
    """Records a usage row for every request that reaches it. With `max_body_bytes`, it reads the request's JSON
    body first (413 past it), for the row's parameters and the steps below (`RequestContext.request_json`)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        recorder: UsageRecorder,
        pricing: PriceTable,
        kind: str,
        provider: str | None,
        max_body_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.recorder = recorder
        self.pricing = pricing
        self.kind = kind
        self.provider = provider
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.recorder.refuses_requests:
            raise UsageUnavailableError()
        outcome = Outcome()
        observer: ResponseObserver | None = None
        recorded = False

        async def send_observing_usage(message: Message) -> None:
            nonlocal observer, recorded
            if message["type"] == "http.response.start":
                outcome.status = message["status"]
                content_type, content_encoding = _content_headers(message.get("headers", ()))
                observer = observer_for(
                    self.kind, content_type=content_type, content_encoding=content_encoding
                )
            elif message["type"] == "http.response.body":
                if outcome.first_byte_at is None:
                    outcome.first_byte_at = time.perf_counter()
                body = message.get("body", b"")
                if body and observer is not None:
                    observer.feed(body)
                if not message.get("more_body", False):
                    outcome.completed = True
                    recorded = True
                    self._record(scope, outcome, observer)
            await send(message)

        try:
            if self.max_body_bytes is not None:
                read = await read_json_body(scope, receive, self.max_body_bytes)
                if read is None:
                    return  # the client left before sending its whole body
                request_json, receive = read
                context = RequestContext.of(scope)
                if context is not None:
                    context.request_json = request_json
                if isinstance(model := request_json.get("model"), str):
                    check_text(model, param="model", column=UsageEvent.model)
            await self.app(scope, receive, send_observing_usage)
        except GatewayError as exc:
            outcome.failed(exc.status_code, exc.code)
            raise
        except Exception:
            error = InternalError()
            outcome.failed(error.status_code, error.code)
            raise
        finally:
            if not recorded:
                self._record(scope, outcome, observer)

    def _record(self, scope: Scope, outcome: Outcome, observer: ResponseObserver | None) -> None:
        observed = observer.result() if observer is not None else ObservedUsage()
        context = RequestContext.of(scope)
        row = self._row(scope, context, outcome, observed)
        self.recorder.record(row)
        if context is not None and context.on_usage is not None:
            context.on_usage(row)  # the budget's settlement (gateway.middleware.admission)

    def _row(
        self, scope: Scope, context: RequestContext | None, outcome: Outcome, observed: ObservedUsage
    ) -> UsageRecord:
        request = (context.request_json if context is not None else None) or {}
        model = request.get("model")
        return usage_row(
            context,
            outcome,
            self.pricing,
            kind=self.kind,
            method=scope["method"],
            path=scope["path"],
            provider=self.provider,
            model=model if isinstance(model, str) and model else observed.model,
            usage=observed,
            is_stream=request.get("stream") is True,
        )


def _content_headers(headers: Any) -> tuple[str | None, str | None]:
    content_type = content_encoding = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-type":
            content_type = value.decode("latin-1")
        elif lowered == b"content-encoding":
            content_encoding = value.decode("latin-1")
    return content_type, content_encoding
