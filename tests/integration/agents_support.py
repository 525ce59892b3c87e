"""Helpers of the agent tests: users that log in over HTTP, agents made through the API, chat over WebSocket."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from gateway.db.engine import Database
from gateway.db.models import UsageEvent
from gateway.settings import Settings
from tests.conftest import add_user

PASSWORD = "correct horse battery staple"
FRAME_SECONDS = 10.0


@dataclass
class User:
    """A user of a gateway, logged in through the login route."""

    base_url: str
    email: str
    access_token: str

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1)

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.access_token}"}

    def request(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {token or self.access_token}", **kwargs.pop("headers", {})}
        return httpx.request(method, self.base_url + path, headers=headers, timeout=10, **kwargs)

    def create_agent(self, **body: Any) -> dict[str, Any]:
        response = self.request("POST", "/v1/agents", json=body)
        assert response.status_code == 201, response.text
        agent: dict[str, Any] = response.json()
        return agent

    def running_agent(self, **body: Any) -> dict[str, Any]:
        agent = self.create_agent(**body)
        response = self.request("POST", f"/v1/agents/{agent['id']}/start")
        assert response.status_code == 200, response.text
        started: dict[str, Any] = response.json()
        return started

    def api_token(self, scopes: list[str]) -> str:
        response = self.request("POST", "/v1/api-tokens", json={"name": "agents", "scopes": scopes})
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        return token

    def agent_key(self, agent_id: str, scopes: list[str] | None = None) -> str:
        body = {"name": "test"} if scopes is None else {"name": "test", "scopes": scopes}
        response = self.request("POST", f"/v1/agents/{agent_id}/api-keys", json=body)
        assert response.status_code == 201, response.text
        key: str = response.json()["raw_key"]
        return key

    @asynccontextmanager
    async def chat(
        self, agent_id: str, *, token: str | None = None, headers: dict[str, str] | None = None
    ) -> AsyncIterator[ClientConnection]:
        """A chat socket, the credential in the `bearer` subprotocol (`headers` on the handshake)."""
        protocols = [Subprotocol("bearer"), Subprotocol(token or self.access_token)]
        url = f"{self.ws_url}/v1/agents/{agent_id}/chat"
        async with connect(url, subprotocols=protocols, additional_headers=headers) as socket:
            yield socket


def new_user(gateway_env: dict[str, str], base_url: str) -> User:
    """A fresh user in the gateway's database, logged in."""
    email = f"agents-{uuid.uuid4().hex[:10]}@example.com"
    database_url = Settings.from_env(gateway_env, env_file=None).database_url
    asyncio.run(add_user(database_url, email=email, password=PASSWORD))
    response = httpx.post(f"{base_url}/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return User(base_url, email, response.json()["access_token"])


async def usage_rows(
    gateway_env: dict[str, str], request_id: str, *, count: int = 1, seconds: float = 10.0
) -> list[UsageEvent]:
    """The usage rows recorded under `request_id`, read from the gateway's database once there are `count` (or
    after `seconds`)."""
    database = Database(Settings.from_env(gateway_env, env_file=None).database_url)
    database.open()
    try:
        deadline = time.monotonic() + seconds
        while True:
            async with database.session() as session:
                query = select(UsageEvent).where(UsageEvent.request_id == request_id)
                rows = list((await session.scalars(query.order_by(UsageEvent.created_at))).all())
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.1)
    finally:
        await database.close()


async def send_message(socket: ClientConnection, content: str) -> None:
    await socket.send(json.dumps({"type": "message", "content": content}))


async def next_frame(socket: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), FRAME_SECONDS))
    return frame


async def turn_frames(socket: ClientConnection, content: str) -> list[dict[str, Any]]:
    """Send a message and read frames up to the turn's last: `stream_end`, an error, or a deny verdict."""
    await send_message(socket, content)
    frames = []
    while True:
        frame = await next_frame(socket)
        frames.append(frame)
        if frame["type"] in ("stream_end", "error") or frame.get("decision") == "deny":
            return frames
