"""The calibration baseline: the least a Starlette proxy on httpx + aiohttp can do: no auth, usage, rewrite.

The gateway's cost is read against this, so that the harness and the machine are measured apart from our code.
Run: `BENCH_UPSTREAM_URL=http://127.0.0.1:9101 python bench/passthrough.py --port 9102`
(or `uvicorn passthrough:app --app-dir bench --loop uvloop --http httptools`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import httpx
import uvicorn
from httpx_aiohttp import AiohttpTransport
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

UPSTREAM_URL = os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:9101").rstrip("/")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000), auto_decompress=False)
    async with httpx.AsyncClient(transport=AiohttpTransport(client=session), timeout=300.0) as client:
        app.state.client = client
        yield


async def chat_completions(request: Request) -> StreamingResponse:
    client: httpx.AsyncClient = request.app.state.client
    upstream = await client.send(
        client.build_request(
            "POST",
            UPSTREAM_URL + "/v1/chat/completions",
            content=await request.body(),
            headers={"content-type": request.headers.get("content-type", "application/json")},
        ),
        stream=True,
    )
    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
    return StreamingResponse(
        upstream.aiter_raw(), upstream.status_code, headers, background=BackgroundTask(upstream.aclose)
    )


app = Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"])], lifespan=lifespan)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the pass-through baseline proxy")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9102)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools", access_log=False)
