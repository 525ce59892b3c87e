"""A recording tap between the gateway and a real Chroma server: forwards everything, remembers what it saw.

Tests use it to prove what reached Chroma (every database name namespaced, the gateway's key, never the user's
credential), which the Chroma server itself does not tell.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass(frozen=True)
class Seen:
    method: str
    raw_path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ChromaTap:
    chroma_url: str
    url: str = ""  # the tap's own, once served
    seen: list[Seen] = field(default_factory=list)

    def app(self) -> Starlette:
        async def forward(request: Request) -> Response:
            body = await request.body()
            raw_path = request.scope["raw_path"].decode("ascii")
            query = request.scope["query_string"].decode("ascii")
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.seen.append(Seen(request.method, raw_path, query, headers, body))
            async with httpx.AsyncClient() as client:
                answer = await client.request(
                    request.method,
                    f"{self.chroma_url}{raw_path}" + (f"?{query}" if query else ""),
                    content=body,
                    headers={"content-type": headers.get("content-type", "application/json")},
                )
            return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))

        methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]
        return Starlette(routes=[Route("/{path:path}", forward, methods=methods)])
