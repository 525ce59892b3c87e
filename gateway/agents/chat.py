"""Agent chat over WebSocket: the credential (session cookie or the `bearer` subprotocol), the agent, then a loop
of client frames, each message a `Turn`, one turn at a time per agent.

Refusals before the handshake are HTTP answers (401/403/404) where the server can send them; a stopped agent
is a 4409 close. The socket is read during a turn too, so a close cancels the turn, which closes the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.agents.access import check_agent_access, owned_agent
from gateway.agents.turns import AgentGoneError, AgentNotRunningError, ChatServices, Turn
from gateway.auth.authenticator import Authenticator
from gateway.auth.principals import AGENT_KEY, Principal
from gateway.auth.sessions import SESSION_COOKIE
from gateway.context import RequestContext, request_id_from
from gateway.db.agent_models import RUNNING
from gateway.errors import AuthenticationError, GatewayError, PermissionDeniedError, error_response

logger = logging.getLogger("gateway.agents")

BEARER_SUBPROTOCOL = "bearer"
CHAT_SCOPE = "chat"  # what an agent key needs for this route
MAX_FRAME_CHARS = 256 * 1024
CLOSE_NOT_RUNNING = 4409
CLOSE_GONE = 4404
CLOSE_POLICY = 1008


class FrameError(ValueError):
    """A client frame that cannot be taken: its code and message go back in an error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_frame(message: Mapping[str, Any], *, max_chars: int = MAX_FRAME_CHARS) -> str:
    """The content of a `{"type": "message", "content": str}` frame. Raises `FrameError`."""
    text = message.get("text")
    if text is None:
        raise FrameError("invalid_frame", "Send text frames of JSON.")
    if len(text) > max_chars:
        raise FrameError("frame_too_large", f"Frames are limited to {max_chars} characters.")
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise FrameError("invalid_json", "The frame is not JSON.") from None
    if not isinstance(frame, dict):
        raise FrameError("invalid_frame", "The frame must be a JSON object.")
    if frame.get("type") != "message":
        raise FrameError("unknown_type", 'Unknown frame type; send {"type": "message", "content": "..."}.')
    content = frame.get("content")
    if not isinstance(content, str):
        raise FrameError("invalid_frame", "content must be a string.")
    if not content.strip():
        raise FrameError("empty_content", "content is empty.")
    return content


def presented_credential(websocket: WebSocket) -> tuple[str | None, bool]:
    """(the credential, whether it came in the `bearer` subprotocol): the subprotocol, an Authorization
    header (clients that can set one), or the session cookie, in that order."""
    offered = [protocol.strip() for protocol in websocket.scope.get("subprotocols", [])]
    if BEARER_SUBPROTOCOL in offered:
        tokens = [protocol for protocol in offered if protocol != BEARER_SUBPROTOCOL]
        return (tokens[0] if tokens else None), True
    authorization = websocket.headers.get("authorization")
    if authorization is not None:
        kind, _, credential = authorization.partition(" ")
        return (credential.strip() if kind.lower() == "bearer" else None), False
    return websocket.cookies.get(SESSION_COOKIE), False


def check_origin(websocket: WebSocket) -> None:
    """A cookie-authenticated socket from a browser must come from the gateway's own origin (cross-site
    WebSocket hijacking). Raises `PermissionDeniedError`."""
    origin = websocket.headers.get("origin")
    host = websocket.headers.get("host")
    if origin is None:
        return  # not a browser: it cannot have been made to send the cookie
    scheme = "https" if websocket.url.scheme == "wss" else "http"
    if host is None or origin != f"{scheme}://{host}":
        raise PermissionDeniedError("Cross-site WebSocket refused.", code="csrf_failed")


class AgentChat:
    """The `/v1/agents/{agent_id}/chat` endpoint; holds which agents are mid-turn in this process."""

    def __init__(self, authenticator: Authenticator, services: ChatServices) -> None:
        self.authenticator = authenticator
        self.services = services
        self._turning: set[str] = set()

    async def serve(self, websocket: WebSocket) -> None:
        """The endpoint: admit, accept, then converse until the socket closes."""
        agent_id = websocket.path_params["agent_id"]
        try:
            principal, via_subprotocol, state = await self._admit(websocket, agent_id)
        except GatewayError as exc:
            await refuse(websocket, exc)
            return
        await websocket.accept(subprotocol=BEARER_SUBPROTOCOL if via_subprotocol else None)
        if state != RUNNING:
            await websocket.close(CLOSE_NOT_RUNNING, "The agent is not running.")
            return
        await self._converse(websocket, principal, agent_id)

    async def _admit(self, websocket: WebSocket, agent_id: str) -> tuple[Principal, bool, str]:
        """(the caller, whether it used the subprotocol, the agent's state). Raises a `GatewayError`."""
        credential, via_subprotocol = presented_credential(websocket)
        if not credential:
            raise AuthenticationError("A valid credential is required.", code="missing_credential")
        principal = await self.authenticator.authenticate(credential)
        if not via_subprotocol and "authorization" not in websocket.headers:
            check_origin(websocket)
        check_agent_access(principal, agent_id, agent_key_ok=True)
        if principal.kind == AGENT_KEY and not principal.may(CHAT_SCOPE):
            raise PermissionDeniedError(
                f"This key lacks the {CHAT_SCOPE!r} scope.", code="insufficient_scope"
            )
        websocket.scope["gateway"] = RequestContext(
            request_id_from(websocket.scope["headers"]), principal=principal
        )
        async with self.services.database.session() as session:
            agent = await owned_agent(session, principal, agent_id)
        return principal, via_subprotocol, agent.state

    async def _converse(self, websocket: WebSocket, principal: Principal, agent_id: str) -> None:
        turn: asyncio.Task[None] | None = None

        async def send_frame(frame: dict[str, Any]) -> None:
            await websocket.send_text(orjson.dumps(frame).decode())

        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                try:
                    content = parse_frame(message)
                except FrameError as exc:
                    await send_frame({"type": "error", "code": exc.code, "message": exc.message})
                    continue
                if (turn is not None and not turn.done()) or agent_id in self._turning:
                    await send_frame(
                        {
                            "type": "error",
                            "code": "turn_in_progress",
                            "message": "Wait for the current turn to end.",
                        }
                    )
                    continue
                self._turning.add(agent_id)
                turn = asyncio.create_task(
                    self._take_turn(websocket, Turn(self.services, send_frame, principal, agent_id, content))
                )
        except WebSocketDisconnect:
            return
        finally:
            if turn is not None and not turn.done():
                turn.cancel()  # closes the upstream at once; the turn still records its usage
                with contextlib.suppress(asyncio.CancelledError):
                    await turn

    async def _take_turn(self, websocket: WebSocket, turn: Turn) -> None:
        try:
            await turn.run()
        except AgentNotRunningError:
            await _close(websocket, CLOSE_NOT_RUNNING, "The agent is not running.")
        except AgentGoneError:
            await _close(websocket, CLOSE_GONE, "The agent no longer exists.")
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the socket went away mid-turn; the loop ends the connection
        except Exception:
            logger.exception("agent chat: a turn of %s failed", turn.agent_id)
            await _close(websocket, 1011, "The turn failed.")
        finally:
            self._turning.discard(turn.agent_id)


async def refuse(websocket: WebSocket, error: GatewayError) -> None:
    """Refuse the handshake: an HTTP answer with the error envelope where the server supports it, else a
    policy-violation close before accepting (which the server turns into 403)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(error))
    else:
        await websocket.close(CLOSE_POLICY)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        await websocket.close(code, reason)
