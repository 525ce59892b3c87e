"""Agent chat over WebSocket: the agent, then a loop of client frames, each message a `Turn`, one turn at a time
per agent.

The handshake is admitted by the route's auth step, as every other route is (`gateway.middleware.auth`: the
credential in the `bearer` subprotocol, an Authorization header or the session cookie, the Origin checked for a
cookie); the request context it leaves (the principal, the request id) goes into every turn. Refusals before the
handshake are raised as errors, answered (401/403/404) by the one error path; a stopped agent is a 4409 close.
The socket is read during a turn too, so a close cancels the turn, which closes the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.agents.access import check_agent_access, owned_agent, principal_of
from gateway.agents.turns import AgentGoneError, AgentNotRunningError, ChatServices, Turn
from gateway.context import RequestContext
from gateway.db.agent_models import RUNNING
from gateway.errors import PermissionDeniedError
from gateway.fields import is_storable
from gateway.principals import AGENT_KEY, Principal

logger = logging.getLogger("gateway.agents")

BEARER_SUBPROTOCOL = "bearer"  # Sec-WebSocket-Protocol: bearer, <token> (the route's auth step reads it)
CHAT_SCOPE = "chat"  # what an agent key needs for this route
MAX_FRAME_CHARS = 256 * 1024
CLOSE_NOT_RUNNING = 4409
CLOSE_GONE = 4404


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
    if not is_storable(content):  # it is stored as the session's message
        raise FrameError("invalid_frame", "content holds a character that cannot be stored (NUL).")
    return content


class AgentChat:
    """The `/v1/agents/{agent_id}/chat` endpoint, behind the auth step (agent keys let through to the checks
    here); holds which agents are mid-turn in this process."""

    def __init__(self, services: ChatServices) -> None:
        self.services = services
        self._turning: set[str] = set()

    async def serve(self, websocket: WebSocket) -> None:
        """The endpoint: admit, accept, then converse until the socket closes. Raises a `GatewayError` to refuse
        the handshake."""
        agent_id = websocket.path_params["agent_id"]
        principal, state = await self._admit(websocket, agent_id)
        # Accepted with the `bearer` subprotocol when the credential came in it: the auth step sees to that.
        await websocket.accept()
        if state != RUNNING:
            await websocket.close(CLOSE_NOT_RUNNING, "The agent is not running.")
            return
        context = RequestContext.of(websocket.scope)
        assert context is not None  # the principal came on it
        await self._converse(websocket, context, principal, agent_id)

    async def _admit(self, websocket: WebSocket, agent_id: str) -> tuple[Principal, str]:
        """(the caller the auth step admitted, the agent's state) when the caller may chat with the agent. Raises
        a `GatewayError`."""
        principal = principal_of(websocket)
        check_agent_access(principal, agent_id, agent_key_ok=True)
        if principal.kind == AGENT_KEY and not principal.may(CHAT_SCOPE):
            raise PermissionDeniedError(
                f"This key lacks the {CHAT_SCOPE!r} scope.", code="insufficient_scope"
            )
        async with self.services.database.session() as session:
            agent = await owned_agent(session, principal, agent_id)
        return principal, agent.state

    async def _converse(
        self, websocket: WebSocket, context: RequestContext, principal: Principal, agent_id: str
    ) -> None:
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
                    self._take_turn(
                        websocket, Turn(self.services, send_frame, context, principal, agent_id, content)
                    )
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
            logger.exception("agent chat: a turn of %s failed (request %s)", turn.agent_id, turn.request_id)
            await _close(websocket, 1011, "The turn failed.")
        finally:
            self._turning.discard(turn.agent_id)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        await websocket.close(code, reason)
