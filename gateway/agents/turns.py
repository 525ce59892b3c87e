"""One chat turn of an agent: quota, the governance verdict (logged before the model is called), the model's
reply streamed frame by frame, both messages stored, the reply logged, and one usage row however it ended."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.agents.completions import CompletionUsage, ProviderError, StreamedCompletion, stream_completion
from gateway.agents.events import REPLY_KIND, VERDICT_KIND, reply_event, verdict_event
from gateway.agents.governance import GovernancePolicy, Verdict
from gateway.agents.providers import ProviderRegistry
from gateway.agents.quotas import Quotas, check_chat_quota, lock_agent
from gateway.agents.service import ASSISTANT, USER, conversation
from gateway.agents.vault import Vault, VaultError, byok_key
from gateway.budgets.estimate import worst_case
from gateway.budgets.service import Admission, Budgets
from gateway.context import RequestContext
from gateway.db.agent_models import RUNNING, Agent, AgentMessage
from gateway.db.base import utcnow
from gateway.db.engine import Database
from gateway.errors import QuotaExceededError, ServiceUnavailableError, expected_error
from gateway.fields import storable_text
from gateway.ids import new_id
from gateway.principals import Principal
from gateway.transparency.log import TransparencyLog, hash_text
from gateway.upstreams import UpstreamClients
from gateway.usage.observers import ObservedUsage
from gateway.usage.pricing import PriceTable
from gateway.usage.recorder import UsageRecord, UsageRecorder
from gateway.usage.rows import Outcome, usage_row

logger = logging.getLogger("gateway.agents")

SendFrame = Callable[[dict[str, Any]], Awaitable[None]]
REQUEST_TYPE = "agent_chat"
CONTEXT_MESSAGES = 100  # the latest messages of the session the model sees
LONG_TEXT_CHARS = 4096  # longer messages are checked off the event loop
# How long a turn's claim on its agent holds if its process dies before releasing it.
TURN_LEASE = timedelta(minutes=10)


class AgentNotRunningError(Exception):
    """The agent is stopped: the connection is closed with 4409."""


class TurnInProgressError(Exception):
    """Another turn of this agent is running, here or on another instance."""


class AgentGoneError(Exception):
    """The agent was deleted (or is not the caller's) while the connection was open."""


@dataclass(frozen=True, slots=True)
class ChatServices:
    """What a turn needs, built once per app."""

    database: Database
    providers: ProviderRegistry
    clients: UpstreamClients
    policy: GovernancePolicy
    recorder: UsageRecorder
    pricing: PriceTable
    log: TransparencyLog
    vault: Vault | None
    quotas: Quotas | None
    # Budgets and rate limits (gateway.budgets): the caller's, and the agent's own, reserved before the model is
    # called and settled by the turn's usage row; the output a turn reserves, which names no max_tokens.
    budgets: Budgets | None = None
    default_max_tokens: int = 4096
    # The claims this process could not release (the database away), by agent: its next turn may take the agent
    # over from them, rather than every turn of that agent waiting for `TURN_LEASE` to end.
    unreleased: dict[str, datetime] = field(default_factory=dict)


@dataclass(slots=True)
class _Seen:
    """What the turn got to, for its usage row."""

    agent: Agent | None = None
    outcome: Outcome = field(default_factory=Outcome)  # the first delta is its first byte
    completion: StreamedCompletion | None = None
    lease: datetime | None = None  # until when this turn holds its agent
    recorded: bool = False
    admission: Admission | None = None  # what the turn reserved against its budgets


@dataclass(slots=True)
class Turn:
    """One user message and everything it sets off. `run` sends the frames through `send`.

    `context` is the chat connection's: its request id (the client's `X-Request-ID` on the handshake, when sane)
    goes into the turn's logs, its upstream request and its usage row; its principal is the caller.
    """

    services: ChatServices
    send: SendFrame
    context: RequestContext
    principal: Principal
    agent_id: str
    content: str

    @property
    def request_id(self) -> str:
        return self.context.request_id

    async def run(self) -> None:
        """Raises `AgentNotRunningError` / `AgentGoneError` before anything happened; every other failure is
        an error frame. Cancellation (the socket closed) closes the upstream and still records the usage."""
        seen = _Seen()
        try:
            await self._run(seen)
        except TurnInProgressError:
            await self.send(
                {"type": "error", "code": "turn_in_progress", "message": "Wait for the current turn to end."}
            )
        except QuotaExceededError as exc:
            seen.outcome.failed(exc.status_code, exc.code)
            await self._finish(seen, {"type": "error", "code": exc.code, "message": exc.message})
        except ProviderError as exc:
            self._provider_failed(seen, exc)
            await self._finish(seen, {"type": "error", "code": exc.code, "message": exc.message})
        except (AgentNotRunningError, AgentGoneError, asyncio.CancelledError):
            raise
        except Exception as exc:
            away = _dependency_away(exc)
            if away is None:
                logger.exception("agent chat turn failed (request %s)", self.request_id)
                seen.outcome.failed(500, "internal_error")
                await self._finish(
                    seen, {"type": "error", "code": "internal_error", "message": "The turn failed."}
                )
            else:  # an outage (a database partitioned or cut), not a fault: said as such, in one line
                logger.warning(
                    "agent chat turn of %s ended with %s: a dependency is away (%s; request %s)",
                    self.agent_id,
                    away.code,
                    type(exc).__name__,
                    self.request_id,
                )
                seen.outcome.failed(away.status_code, away.code)
                await self._finish(seen, {"type": "error", "code": away.code, "message": away.message})
        finally:
            if seen.lease is not None:  # no frame ended the turn (the socket closed): let go now
                await asyncio.shield(self._release(seen))
            self._record(seen)

    async def _run(self, seen: _Seen) -> None:
        services = self.services
        # Its own transaction, committed at once: other instances see the claim, and on SQLite the write lock is
        # not held while the transparency log (another connection) appends below.
        async with services.database.session() as session, session.begin():
            seen.lease = await claim_turn(
                session, self.agent_id, self.principal.user_id, ours=services.unreleased.get(self.agent_id)
            )
        if seen.lease is not None:
            services.unreleased.pop(self.agent_id, None)
        async with services.database.session() as session, session.begin():
            agent = await session.get(Agent, self.agent_id)
            if agent is None or agent.user_id != self.principal.user_id:
                raise AgentGoneError()
            if agent.state != RUNNING:
                raise AgentNotRunningError()
            session.expunge(agent)  # a snapshot: a rollback below (quota) must not expire what we read
            if seen.lease is None:
                raise TurnInProgressError()
            seen.agent = agent
            if services.quotas is not None:
                await lock_agent(session, agent.id)
                await check_chat_quota(session, agent, services.quotas)
            verdict = await self._evaluate(agent.governance_mode)
            prompt = AgentMessage(
                id=new_id("msg"),
                agent_id=agent.id,
                session_id=agent.session_id,
                role=USER,
                content=self.content,
                created_at=utcnow(),
                governance_decision=verdict.decision,
            )
            leaf = await services.log.append(
                agent_id=agent.id,
                kind=VERDICT_KIND,
                event=verdict_event(agent, prompt.id, self.content, verdict, prompt.created_at),
            )
            prompt.leaf_hash = hash_text(leaf.leaf_hash)
            session.add(prompt)
        frame = {
            "type": "governance",
            "message_id": prompt.id,
            "mode": verdict.mode,
            "decision": verdict.decision,
            "findings": [finding.as_json() for finding in verdict.findings],
            "leaf_hash": prompt.leaf_hash,
        }
        if verdict.blocks:
            seen.outcome.answered(403)
            await self._finish(seen, frame)
            return
        await self.send(frame)
        await self._reply(agent, prompt, seen)

    async def _finish(self, seen: _Seen, frame: dict[str, Any]) -> None:
        """Send the turn's last frame, the agent let go and the usage journaled first: the client may send its next
        message at once, and no turn it saw end goes unrecorded."""
        await self._release(seen)
        self._record(seen)
        await self.send(frame)

    def _record(self, seen: _Seen) -> None:
        if seen.agent is not None and not seen.recorded:
            seen.recorded = True
            row = self._usage_record(seen)
            self.services.recorder.record(row)
            if seen.admission is not None and self.services.budgets is not None:
                self.services.budgets.settle(seen.admission, cost_usd=row.cost_usd, tokens=row.total_tokens)

    async def _release(self, seen: _Seen) -> None:
        """Let go of the agent. With the database away the claim is left to lapse (`TURN_LEASE`): the turn's last
        frame and its usage row must not wait on, or be lost to, a network that does not answer."""
        lease, seen.lease = seen.lease, None
        if lease is None:
            return
        try:
            async with self.services.database.session() as session, session.begin():
                await session.execute(
                    update(Agent)
                    .where(Agent.id == self.agent_id, Agent.turn_until == lease)
                    .values(turn_until=None)
                )
        except Exception as exc:
            if _dependency_away(exc) is None:
                raise
            self.services.unreleased[self.agent_id] = lease
            logger.warning(
                "agent chat turn of %s: its claim on the agent could not be released (%s); it lapses at %s, or at"
                " this process's next turn of the agent",
                self.agent_id,
                type(exc).__name__,
                lease.isoformat(timespec="seconds"),
            )

    async def _evaluate(self, mode: str) -> Verdict:
        policy = self.services.policy
        if len(self.content) > LONG_TEXT_CHARS:
            return await asyncio.to_thread(policy.evaluate, self.content, mode=mode)
        return policy.evaluate(self.content, mode=mode)

    async def _reply(self, agent: Agent, prompt: AgentMessage, seen: _Seen) -> None:
        services = self.services
        provider = services.providers.get(agent.model_provider)
        if provider is None or not provider.is_configured:
            raise ProviderError(
                "provider_not_configured",
                f"The provider {agent.model_provider!r} is not configured.",
                status=503,
            )
        async with services.database.session() as session:
            history = await conversation(session, agent, limit=CONTEXT_MESSAGES)
            limits = (
                await services.budgets.limits_of(session, self.principal, agent_id=agent.id)
                if services.budgets is not None
                else ()
            )
            try:
                key = (
                    await byok_key(session, agent.id, provider.name, services.vault)
                    if services.vault
                    else None
                )
            except VaultError:
                logger.warning(
                    "the vault key of agent %s for %s does not open (request %s)",
                    agent.id,
                    provider.name,
                    self.request_id,
                )
                raise ProviderError(
                    "vault_error", "The agent's stored key cannot be used.", status=500
                ) from None
        messages = [{"role": message.role, "content": message.content} for message in history]
        if (
            limits and services.budgets is not None
        ):  # refused: QuotaExceededError, an error frame, no model call
            price = services.pricing.price_of(agent.model)
            usd, tokens = worst_case(messages, services.default_max_tokens, price)
            seen.admission = await services.budgets.admit(limits, usd=usd, tokens=tokens)
        reply_id = new_id("msg")
        parts: list[str] = []
        async with stream_completion(
            services.clients[provider.name],
            provider,
            model=agent.model,
            messages=messages,
            byok_key=key,
            request_id=self.request_id,
        ) as completion:
            seen.completion = completion
            await self.send({"type": "stream_start", "message_id": reply_id, "role": ASSISTANT})
            try:
                async for text in completion.deltas():
                    if seen.outcome.first_byte_at is None:
                        seen.outcome.first_byte_at = time.perf_counter()
                    # The provider's text as the message will be stored (a NUL replaced): sent, stored and proved alike.
                    delta = storable_text(text, column=AgentMessage.content)
                    parts.append(delta)
                    await self.send({"type": "stream_chunk", "message_id": reply_id, "content": delta})
            except ProviderError as exc:
                self._provider_failed(seen, exc)
                await self._finish(
                    seen, {"type": "error", "code": exc.code, "message": exc.message, "message_id": reply_id}
                )
                return
        seen.outcome.answered(200)
        await self._store_reply(agent, prompt, reply_id, "".join(parts), completion.usage, seen)

    async def _store_reply(
        self,
        agent: Agent,
        prompt: AgentMessage,
        reply_id: str,
        content: str,
        usage: CompletionUsage,
        seen: _Seen,
    ) -> None:
        at = utcnow()
        leaf = await self.services.log.append(
            agent_id=agent.id,
            kind=REPLY_KIND,
            event=reply_event(agent, reply_id, content, prompt=prompt, usage=usage, at=at),
        )
        async with self.services.database.session() as session, session.begin():
            session.add(
                AgentMessage(
                    id=reply_id,
                    agent_id=agent.id,
                    session_id=agent.session_id,
                    role=ASSISTANT,
                    content=content,
                    created_at=at,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    leaf_hash=hash_text(leaf.leaf_hash),
                )
            )
        await self._finish(
            seen,
            {
                "type": "stream_end",
                "message_id": reply_id,
                "usage": usage.as_json(),
                "leaf_hash": hash_text(leaf.leaf_hash),
            },
        )

    def _provider_failed(self, seen: _Seen, error: ProviderError) -> None:
        """The provider call failed: the row records its status and code (`upstream_timeout`, ...)."""
        logger.warning(
            "agent chat turn of %s: the provider call failed with %s (request %s)",
            self.agent_id,
            error.code,
            self.request_id,
        )
        seen.outcome.failed(error.status, error.code)

    def _usage_record(self, seen: _Seen) -> UsageRecord:
        assert seen.agent is not None
        usage = seen.completion.usage if seen.completion is not None else CompletionUsage()
        return usage_row(
            self.context,
            seen.outcome,
            self.services.pricing,
            kind=REQUEST_TYPE,
            method="WS",
            path=f"/v1/agents/{seen.agent.id}/chat",
            provider=seen.agent.model_provider,
            model=seen.agent.model,  # what was asked for, as the proxied chat records it
            usage=ObservedUsage(
                input_tokens=usage.prompt_tokens,
                output_tokens=usage.completion_tokens,
                total_tokens=usage.total_tokens,
            ),
            is_stream=True,
            agent_id=seen.agent.id,
        )


def _dependency_away(exc: Exception) -> ServiceUnavailableError | None:
    """`exc` as the 503 it stands for when it says a dependency is away (the database cut, partitioned or its pool
    exhausted: every database call is bounded in time, gateway.db.engine); None for anything else."""
    error = expected_error(exc)
    return error if isinstance(error, ServiceUnavailableError) else None


async def claim_turn(
    session: AsyncSession, agent_id: str, user_id: str, *, ours: datetime | None = None
) -> datetime | None:
    """Mark the user's agent as mid-turn until the lease ends; None when another turn holds it (or there is no
    such agent). One conditional UPDATE, so two instances cannot both win; the lease ends a turn whose process
    died before it could release it. `ours` is a lease of this process's that could not be released: still the
    agent's, it is taken over."""
    now = utcnow()
    until = now + TURN_LEASE
    free = or_(Agent.turn_until.is_(None), Agent.turn_until < now)
    claimed = await session.execute(
        update(Agent)
        .where(
            Agent.id == agent_id,
            Agent.user_id == user_id,
            free if ours is None else or_(free, Agent.turn_until == ours),
        )
        .values(turn_until=until)
    )
    return until if claimed.rowcount == 1 else None  # type: ignore[attr-defined]
