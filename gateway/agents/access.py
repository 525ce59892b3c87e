"""Who may reach an agent: the caller's own agents only, agent keys only their own agent's marked routes."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from gateway.agents.service import AGENT_PREFIX
from gateway.auth.principals import AGENT_KEY, API_TOKEN, Principal
from gateway.context import RequestContext
from gateway.db.agent_models import Agent
from gateway.db.engine import Database
from gateway.errors import AuthenticationError, NotFoundError, PermissionDeniedError
from gateway.fields import is_id

AGENTS_SCOPE = "agents"


def principal_of(connection: HTTPConnection) -> Principal:
    """The authenticated caller of a request (or WebSocket) that passed the auth step. Raises 401 otherwise."""
    context = RequestContext.of(connection.scope)
    if context is None or not isinstance(context.principal, Principal):
        raise AuthenticationError("A valid credential is required.", code="missing_credential")
    return context.principal


def check_agent_access(principal: Principal, agent_id: str | None, *, agent_key_ok: bool) -> None:
    """Whether `principal` may call an agent route at all: API tokens need the `agents` scope; agent keys
    only routes marked for them (`agent_key_ok`) of their own agent (`agent_id`; None for routes without one,
    such as the listing). Raises `PermissionDeniedError`."""
    if principal.kind == AGENT_KEY:
        if not agent_key_ok:
            raise PermissionDeniedError("Agent keys may not call this route.", code="agent_key_not_allowed")
        if agent_id is None or principal.agent_id != agent_id:
            raise PermissionDeniedError(
                "This agent key belongs to another agent.", code="agent_key_not_allowed"
            )
    elif principal.kind == API_TOKEN and not principal.may(AGENTS_SCOPE):
        raise PermissionDeniedError(
            f"This token lacks the {AGENTS_SCOPE!r} scope.", code="insufficient_scope"
        )


async def owned_agent(session: AsyncSession, principal: Principal, agent_id: str) -> Agent:
    """The agent `agent_id` when `principal`'s user owns it. Raises `NotFoundError` (also for another user's, and
    without asking the database for an id of the wrong form)."""
    agent = (
        await session.scalar(select(Agent).where(Agent.id == agent_id, Agent.user_id == principal.user_id))
        if is_id(agent_id, AGENT_PREFIX)
        else None
    )
    if agent is None:
        raise NotFoundError("No such agent.", code="agent_not_found")
    return agent


async def agent_for_request(database: Database, connection: HTTPConnection, *, agent_key_ok: bool) -> Agent:
    """The agent of the route's `agent_id` path parameter when the caller may reach it, loaded from `database` in
    a session of its own (detached, readable).

    Raises 401 without a principal, 403 when the credential may not call this route (see
    `check_agent_access`), 404 for a missing agent or another user's.
    """
    principal = principal_of(connection)
    agent_id = connection.path_params["agent_id"]
    check_agent_access(principal, agent_id, agent_key_ok=agent_key_ok)
    async with database.session() as session:
        return await owned_agent(session, principal, agent_id)
