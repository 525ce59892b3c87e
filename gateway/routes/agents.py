"""`/v1/agents`: agents and their lifecycle, messages, proofs and the chat WebSocket. Thin endpoints only.

Every route sits behind the auth middleware (agent keys let through); which credential may call which route,
and whose agent it is, is decided in `gateway.agents.access` (another user's agent is 404).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, WebSocketRoute

from gateway.agents import service
from gateway.agents.access import check_agent_access, owned_agent, principal_of
from gateway.agents.chat import BEARER_SUBPROTOCOL, AgentChat
from gateway.agents.files import remove_agent_files
from gateway.agents.governance import MODES
from gateway.agents.providers import ProviderRegistry
from gateway.agents.storage import Storage
from gateway.agents.turns import ChatServices
from gateway.auth.authenticator import Authenticator
from gateway.auth.revocations import AGENT, Revocations
from gateway.db.agent_models import Agent
from gateway.db.engine import Database
from gateway.errors import ClientError, InvalidRequestError, NotFoundError, PermissionDeniedError
from gateway.fields import is_id, query_int
from gateway.middleware.auth import AuthMiddleware
from gateway.openapi import (
    EMPTY,
    HASH,
    INTEGER,
    STRING,
    TEXT,
    TIME,
    USER,
    ApiRoute,
    Operation,
    Reply,
    Schema,
    data_of,
    nullable,
    obj,
)
from gateway.routes.bodies import json_object, optional_string
from gateway.transparency.log import TransparencyLog, hash_text, parse_hash_text

DEFAULT_PAGE = 50
MAX_PAGE = 500
MAX_NAME_CHARS = 200
MESSAGE_PREFIX = "msg"  # gateway.agents.turns
VERIFICATION_PATH = "/verify/proof/"


class AgentRoutes:
    def __init__(
        self,
        database: Database,
        providers: ProviderRegistry,
        log: TransparencyLog,
        revocations: Revocations,
        storage: Storage,
    ) -> None:
        self.database = database
        self.providers = providers
        self.log = log
        self.revocations = revocations
        self.storage = storage

    async def create(self, request: Request) -> JSONResponse:
        principal = principal_of(request)
        check_agent_access(principal, None, agent_key_ok=False)
        changes = self._changes(await _body(request))
        async with self.database.session() as session, session.begin():
            agent = await service.create_agent(session, user_id=principal.user_id, changes=changes)
        return JSONResponse(service.agent_json(agent, message_count=0), status_code=201)

    async def list(self, request: Request) -> JSONResponse:
        principal = principal_of(request)
        if not principal.is_platform_user:
            raise PermissionDeniedError(
                "Listing agents requires a platform JWT; API tokens and agent keys are rejected here.",
                code="api_tokens_not_allowed",
            )
        async with self.database.session() as session:
            agents = await service.list_agents(session, principal.user_id)
        return JSONResponse({"data": [service.agent_json(agent, message_count=n) for agent, n in agents]})

    async def get(self, request: Request) -> JSONResponse:
        async with self.database.session() as session:
            agent = await _agent(request, session, agent_key_ok=True)
            count = await service.message_count(session, agent)
        return JSONResponse(service.agent_json(agent, message_count=count))

    async def update(self, request: Request) -> JSONResponse:
        body = await _body(request)
        async with self.database.session() as session, session.begin():
            agent = await _agent(request, session, agent_key_ok=False)
            service.update_agent(agent, self._changes(body))
            await session.flush()
            count = await service.message_count(session, agent)
        return JSONResponse(service.agent_json(agent, message_count=count))

    async def delete(self, request: Request) -> Response:
        async with self.database.session() as session:
            async with session.begin():
                agent = await _agent(request, session, agent_key_ok=False)
                await session.execute(delete(Agent).where(Agent.id == agent.id))  # keys, messages... cascade
                target = await self.revocations.announce(session, AGENT, agent.id)
            self.revocations.apply(target)  # its agent keys fail everywhere from now on
        await remove_agent_files(self.storage, agent.id)
        return Response(status_code=204)

    async def start(self, request: Request) -> JSONResponse:
        async with self.database.session() as session, session.begin():
            agent = await _agent(request, session, agent_key_ok=False)
            await service.start_agent(session, agent)
            count = await service.message_count(session, agent)
        return JSONResponse(service.agent_json(agent, message_count=count))

    async def stop(self, request: Request) -> JSONResponse:
        async def log_size() -> int:
            return (await self.log.checkpoint()).tree_size

        async with self.database.session() as session, session.begin():
            agent = await _agent(request, session, agent_key_ok=False)
            checkpoint = await service.stop_agent(session, agent, log_size=log_size)
            count = await service.message_count(session, agent)
        body = service.agent_json(agent, message_count=count)
        body["checkpoint"] = service.checkpoint_json(checkpoint) if checkpoint is not None else None
        return JSONResponse(body)

    async def messages(self, request: Request) -> JSONResponse:
        limit = query_int(
            request.query_params.get("limit"), param="limit", low=1, high=MAX_PAGE, default=DEFAULT_PAGE
        )
        async with self.database.session() as session:
            agent = await _agent(request, session, agent_key_ok=True)
            before = await _before(session, agent, request.query_params.get("before"))
            rows, has_more = await service.session_messages(session, agent, limit=limit, before=before)
        return JSONResponse(
            {
                "data": [service.message_json(row) for row in rows],
                "session_id": agent.session_id,
                "has_more": has_more,
            }
        )

    async def clear_messages(self, request: Request) -> Response:
        async with self.database.session() as session, session.begin():
            agent = await _agent(request, session, agent_key_ok=False)
            await service.clear_session(session, agent)
        return Response(status_code=204)

    async def proof(self, request: Request) -> JSONResponse:
        async with self.database.session() as session:
            agent = await _agent(request, session, agent_key_ok=True)
        leaf_hash = parse_hash_text(request.path_params["leaf_hash"], param="leaf_hash")
        proof = await self.log.proof_for(leaf_hash)
        if proof is None:
            raise NotFoundError("No leaf has this hash.", code="leaf_not_found")
        if proof.agent_id != agent.id:
            raise PermissionDeniedError("This leaf belongs to another agent.", code="foreign_leaf")
        text = hash_text(leaf_hash)
        return JSONResponse(
            {
                "agent_id": agent.id,
                "hash": text,
                "proof": proof.as_json(),
                "proof_error": None,
                "verification_url": VERIFICATION_PATH + text,
                "verification_portal": str(request.base_url).rstrip("/") + VERIFICATION_PATH,
            }
        )

    def _changes(self, body: dict[str, Any]) -> service.AgentChanges:
        names = {
            field: _nonempty(body, field)
            for field in ("agent_name", "model", "model_provider", "governance_mode")
        }
        provider, mode = names["model_provider"], names["governance_mode"]
        if provider is not None and provider not in self.providers:
            known = ", ".join(sorted(self.providers))
            raise InvalidRequestError(
                f"Unknown model_provider {provider!r}; known: {known}.",
                param="model_provider",
                code="invalid_provider",
            )
        if mode is not None and mode not in MODES:
            raise InvalidRequestError(
                "governance_mode must be 'transparent' or 'enforcing'.",
                param="governance_mode",
                code="invalid_mode",
            )
        return service.AgentChanges(**names)


async def _agent(request: Request, session: AsyncSession, *, agent_key_ok: bool) -> Agent:
    principal = principal_of(request)
    agent_id = request.path_params["agent_id"]
    check_agent_access(principal, agent_id, agent_key_ok=agent_key_ok)
    return await owned_agent(session, principal, agent_id)


async def _body(request: Request) -> dict[str, Any]:
    """The JSON object body; an empty body is an empty object (every field is optional)."""
    if request.headers.get("content-length") == "0":
        return {}
    return await json_object(request)


def _nonempty(body: dict[str, Any], field: str) -> str | None:
    value = optional_string(body, field, column=getattr(Agent, field))
    if value is not None and not value.strip():
        raise InvalidRequestError(f"{field} must not be empty.", param=field)
    return value.strip() if value is not None else None


async def _before(session: AsyncSession, agent: Agent, raw: str | None) -> datetime | None:
    """`?before=`: a message id of the session (its time), or an ISO 8601 time."""
    if raw is None:
        return None
    if raw.startswith("msg_"):
        # One of the wrong form is not looked up, and answered as one of no message.
        message = await service.find_message(session, agent, raw) if is_id(raw, MESSAGE_PREFIX) else None
        if message is None:
            raise InvalidRequestError("before names no message of this agent.", param="before")
        return message.created_at
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequestError(
            "before must be a message id or an ISO 8601 time.", param="before"
        ) from None
    if moment.tzinfo is None:
        raise InvalidRequestError("before must carry a time zone (e.g. Z).", param="before")
    return moment


async def websocket_required(request: Request) -> Response:
    """A plain GET of the chat route: it only speaks WebSocket."""
    raise UpgradeRequiredError()


class UpgradeRequiredError(ClientError):
    """The route takes WebSocket connections only."""

    status_code = 426
    code = "websocket_required"
    message = "This route speaks WebSocket only."


AGENT_RECORD = obj(
    {
        "id": STRING,
        "agent_name": STRING,
        "model": STRING,
        "model_provider": STRING,
        "governance_mode": {"type": "string", "enum": sorted(MODES)},
        "state": {"type": "string", "enum": ["running", "stopped"]},
        "created_at": TIME,
        "updated_at": TIME,
        "last_started_at": nullable(TIME),
        "last_stopped_at": nullable(TIME),
        "session_id": STRING,
        "message_count": INTEGER,
    }
)
# What the routes take: text within its column, not blank (`_nonempty`), a governance mode by name. The providers
# are the app's (a provider not configured is 400, which a document shared by every app cannot list).
NAME: Schema = {**TEXT, "maxLength": MAX_NAME_CHARS}
AGENT_FIELDS = obj(
    {},
    {
        "agent_name": NAME,
        "model": NAME,
        "model_provider": NAME,
        "governance_mode": {**NAME, "enum": sorted(MODES)},
    },
)
THE_AGENT = Reply("The agent", AGENT_RECORD)
ON_AGENT = (401, 403, 404)  # 404: no such agent, or another user's
CHECKPOINT = obj(
    {
        "id": STRING,
        "created_at": TIME,
        "message_count": INTEGER,
        "last_leaf_hash": nullable(STRING),
        "tree_size": INTEGER,
    }
)
MESSAGE = obj(
    {
        "id": STRING,
        "session_id": STRING,
        "role": STRING,
        "content": STRING,
        "created_at": TIME,
        "governance_decision": nullable(STRING),
        "leaf_hash": nullable(STRING),
        "usage": nullable(obj({"prompt_tokens": nullable(INTEGER), "completion_tokens": nullable(INTEGER)})),
    }
)
CREATE = Operation(
    "A new agent, stopped (fields default as API.md says)",
    {201: THE_AGENT},
    body=AGENT_FIELDS,
    body_required=False,
    errors=(400, 401, 403, 413),
    security=USER,
)
LIST = Operation(
    "The user's agents (platform JWT only)",
    {200: Reply("The agents", data_of(AGENT_RECORD))},
    errors=(401, 403),
    security=USER,
)
GET = Operation("An agent's details (agent key: its own)", {200: THE_AGENT}, errors=ON_AGENT, security=USER)
UPDATE = Operation(
    "Rename or reconfigure an agent",
    {200: THE_AGENT},
    body=AGENT_FIELDS,
    body_required=False,
    errors=(400, *ON_AGENT, 413),
    security=USER,
)
DELETE = Operation(
    "Delete an agent with its keys, files and messages (its log leaves stay)",
    {204: EMPTY},
    errors=ON_AGENT,
    security=USER,
)
START = Operation("stopped -> running (running: no change)", {200: THE_AGENT}, errors=ON_AGENT, security=USER)
STOP = Operation(
    "running -> stopped, with an automatic checkpoint",
    {
        200: Reply(
            "The agent and its `checkpoint` (null when it was not running)",
            {
                **AGENT_RECORD,
                "properties": {**AGENT_RECORD["properties"], "checkpoint": nullable(CHECKPOINT)},
            },
        )
    },
    errors=ON_AGENT,
    security=USER,
)
MESSAGES = Operation(
    "The current session's messages, oldest first",
    {
        200: Reply(
            "A page of messages",
            obj(
                {
                    "data": {"type": "array", "items": MESSAGE},
                    "session_id": STRING,
                    "has_more": {"type": "boolean"},
                }
            ),
        )
    },
    query={
        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
        "before": {
            "type": "string",
            "description": "A message id (msg_...) or an ISO 8601 time with its zone",
        },
    },
    errors=(400, *ON_AGENT),
    security=USER,
)
CLEAR_MESSAGES = Operation(
    "Clear the current session: a new session id", {204: EMPTY}, errors=ON_AGENT, security=USER
)
PROOF = Operation(
    "A leaf's inclusion proof, for a leaf of this agent",
    {
        200: Reply(
            "The proof",
            obj(
                {
                    "agent_id": STRING,
                    "hash": HASH,
                    "proof": {"type": "object"},
                    "proof_error": {"type": "null"},
                    "verification_url": STRING,
                    "verification_portal": STRING,
                }
            ),
        )
    },
    path={"leaf_hash": HASH},
    errors=(400, *ON_AGENT),
    security=USER,
)
CHAT_OVER_HTTP = Operation("The chat, which speaks WebSocket only (this route's upgrade)", {}, errors=(426,))


def agent_routes(
    authenticator: Authenticator,
    services: ChatServices,
    *,
    revocations: Revocations,
    storage: Storage,
) -> list[BaseRoute]:
    """The agent routes, behind auth that lets agent keys through to the checks above."""
    routes = AgentRoutes(services.database, services.providers, services.log, revocations, storage)
    user = [Middleware(AuthMiddleware, authenticator=authenticator, agent_keys=True)]
    one = "/v1/agents/{agent_id}"
    return [
        ApiRoute("/v1/agents", routes.create, methods=["POST"], middleware=user, operation=CREATE),
        ApiRoute("/v1/agents", routes.list, methods=["GET"], middleware=user, operation=LIST),
        ApiRoute(one, routes.get, methods=["GET"], middleware=user, operation=GET),
        ApiRoute(one, routes.update, methods=["PATCH"], middleware=user, operation=UPDATE),
        ApiRoute(one, routes.delete, methods=["DELETE"], middleware=user, operation=DELETE),
        ApiRoute(f"{one}/start", routes.start, methods=["POST"], middleware=user, operation=START),
        ApiRoute(f"{one}/stop", routes.stop, methods=["POST"], middleware=user, operation=STOP),
        ApiRoute(f"{one}/messages", routes.messages, methods=["GET"], middleware=user, operation=MESSAGES),
        ApiRoute(
            f"{one}/messages",
            routes.clear_messages,
            methods=["DELETE"],
            middleware=user,
            operation=CLEAR_MESSAGES,
        ),
        ApiRoute(
            f"{one}/proofs/{{leaf_hash}}", routes.proof, methods=["GET"], middleware=user, operation=PROOF
        ),
        WebSocketRoute(
            f"{one}/chat",
            AgentChat(services).serve,
            middleware=[  # the credential may come in the subprotocol: a browser sets no header on a WebSocket
                Middleware(
                    AuthMiddleware,
                    authenticator=authenticator,
                    agent_keys=True,
                    subprotocol=BEARER_SUBPROTOCOL,
                )
            ],
        ),
        ApiRoute(f"{one}/chat", websocket_required, methods=["GET"], operation=CHAT_OVER_HTTP),
    ]
