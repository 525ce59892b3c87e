"""The dashboard: the static page at `/dashboard` and its files under `/dashboard/static/`, shipped inside the
package (plain ES modules and CSS, no build step). The page signs in with the session routes and reads the same
API as any client; it holds nothing of its own on the server.

Every answer carries a Content-Security-Policy that lets the page load and call only the gateway itself (nothing
from outside, no inline script), and is revalidated on each load (`no-cache`) so that an upgrade shows at once.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.openapi import STRING, ApiRoute, Operation, Reply

STATIC = Path(__file__).parent / "static"
HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
RAW_HEADERS = [(name.encode(), value.encode()) for name, value in HEADERS.items()]


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


class WithHeaders:
    """The static files, each answer with the dashboard's headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in RAW_HEADERS}
                kept = [
                    (name, value) for name, value in message.get("headers", []) if name.lower() not in names
                ]
                message = {**message, "headers": [*kept, *RAW_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def dashboard_routes() -> list[BaseRoute]:
    return [
        ApiRoute("/dashboard", page, methods=["GET"], operation=PAGE),
        Mount("/dashboard/static", app=WithHeaders(StaticFiles(directory=STATIC)), name="dashboard-static"),
    ]


PAGE = Operation(
    "The dashboard: a page that signs in and shows usage, API tokens and agents (its files under /dashboard/static/)",
    {200: Reply("The page", STRING, media_type="text/html")},
)
