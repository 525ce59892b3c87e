"""Admission against budgets and rate limits, and settlement after: the one service the chains and routes use.

**Spend limits** (`usd_per_period`, `tokens_per_period`): a request's worst case is reserved on every limit that
applies by one UPDATE (the CHECK `spent + reserved <= ceiling` makes it all or nothing, and row locks serialize
racers, on one instance or many), with a hold that expires after `BUDGET_RESERVATION_SECONDS`. After the call the
usage capture's row settles it: the hold is released and the actual cost counted. Settlements are written by a
background task, off the request's path. A gateway killed mid-request leaves its holds to expire: every instance
sweeps expired holds (and ended periods) every second, and before it refuses anyone.

**Rate limits** (`requests_per_minute`), a sliding window without a write per request: each instance leases
admissions from the database by one conditional UPDATE (up to a twentieth of the limit, down to one as the window
fills, never more than are left) and admits locally from the lease. A lease's admissions count from the moment it
is granted until a minute and `LEASE_SECONDS` later (a lease is used or given back within `LEASE_SECONDS`, so
each admission counts for at least a minute after its use); what a lease did not use within `LEASE_SECONDS` is
given back. So the window never admits more than the limit, across instances; well under it, an instance writes
once per lease (a twentieth of the limit) and once a second at most to give back what it did not use, however
many requests it admits. One instance leases once at a time per limit; the requests that arrive meanwhile wait
for that lease rather than take their own. A request that finds no admission left is refused only once none is
held unused: its instance gives its own stale lease back first, and it waits out (once) the leases of any instance
that may still give some back, so the window admits no fewer than the limit either.

A principal without limits costs nothing here; one with spend limits, one database round trip (on Postgres one
statement on an autocommit connection, without the pool's ping); rate limits, one more per lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from gateway.budgets import store
from gateway.budgets.limits import (
    NANO,
    REQUESTS,
    SPEND_KINDS,
    USD,
    WINDOW_SECONDS,
    Period,
    owner,
    shown,
)
from gateway.db.engine import Database, create_engine
from gateway.db.uncancelled import finish_uncancelled, left_to_finish
from gateway.errors import QuotaExceededError
from gateway.ids import new_id
from gateway.metrics import Metrics
from gateway.principals import API_TOKEN, AppliedLimit, Principal

logger = logging.getLogger("gateway.budgets")
T = TypeVar("T")

LEASE_SECONDS = 1.0  # a lease's admissions are used, or given back, within this
# How late after `LEASE_SECONDS` another instance's give-back may still come (its writer's round, a busy machine):
# a rate refusal waits this long past the youngest lease that may hold admissions, then asks once more.
GIVE_BACK_GRACE = 1.0
MIN_WAKEUP_SECONDS = 0.05  # the writer's shortest sleep (a database away must not make it spin)
SWEEP_SECONDS = 1.0
# A refusal sweeps first (an expired hold or an ended period must refuse no one), unless a sweep ended this
# recently: a flood of refusals costs one sweep a quarter second, not one each.
REFUSAL_SWEEP_SECONDS = 0.25
LEASE_FRACTION = 20  # a lease takes at most this fraction of the limit...
LEASE_SHRINK = 8  # ...and of what is left of it, so that leases shrink to one as the window fills
MAX_LEASE = 500
MAX_QUEUED_SETTLEMENTS = 100_000
SETTLE_BATCH = 500
ERROR_EVERY_SECONDS = 60.0
DRAIN_SECONDS = 2.0
HOLD_ID_PREFIX = "hold"
OWNER_NAMES = {"token": "API token", "user": "user", "agent": "agent"}


@dataclass(slots=True)
class Lease:
    """Admissions of one rate limit this instance may give without asking the database."""

    hold: str
    limit_id: str
    left: int
    taken_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class Admission:
    """What a request reserved: its hold and the spend limits it holds on."""

    hold: str
    limits: tuple[AppliedLimit, ...]


class Budgets:
    """Admits requests against their principal's limits and settles them; sweeps and gives back in the
    background (`run`)."""

    def __init__(
        self, database: Database, *, reservation_seconds: float, metrics: Metrics | None = None
    ) -> None:
        self.database = database
        self.reservation_seconds = reservation_seconds
        self.metrics = metrics
        self._leases: dict[str, Lease] = {}
        self._leasing: dict[str, asyncio.Future[None]] = {}
        self._left: dict[str, int] = {}  # what each rate limit had left after this instance's last lease
        self._returns: list[Lease] = []
        self._settlements: deque[tuple[Admission, int, int]] = deque()
        self._wakeup = asyncio.Event()
        self._sweep_lock = asyncio.Lock()
        self._give_back_lock = asyncio.Lock()
        self._swept_at = -math.inf
        self._engine: AsyncEngine | None = None

    async def limits_of(
        self, session: AsyncSession, principal: Principal, *, agent_id: str | None = None
    ) -> tuple[AppliedLimit, ...]:
        """The limits that apply to `principal`: its user's, its API token's, its agent's, or `agent_id`'s (an
        agent's chat turn, whoever calls it). The authenticator's `LimitLookup`, asked when a credential is
        proven; an agent's turn asks it each turn."""
        owners = [owner("user", principal.user_id)]
        if principal.kind == API_TOKEN and principal.token_id:
            owners.append(owner("token", principal.token_id))
        if agent_id or principal.agent_id:
            owners.append(owner("agent", agent_id or principal.agent_id or ""))
        return await store.applied_limits(session, owners)

    async def admit(
        self, limits: Sequence[AppliedLimit], *, usd: int, tokens: int, spend: bool = True
    ) -> Admission | None:
        """Admit a request whose worst case is `usd` nano-USD and `tokens` tokens (`spend=False`: rate limits
        only). Returns what to settle, None when nothing was reserved. Raises 429 `rate_limited` or
        `budget_exceeded` (nothing held) when a limit does not fit."""
        spending = tuple(limit for limit in limits if limit.kind in SPEND_KINDS) if spend else ()
        consumed: list[Lease] = []
        try:
            for limit in limits:
                if limit.kind == REQUESTS:
                    consumed.append(await self._admit_rate(limit))
            if not spending:
                return None
            hold = new_id(HOLD_ID_PREFIX)
            await self._reserve_or_refuse(hold, spending, usd=usd, tokens=tokens)
        except QuotaExceededError:
            for lease in consumed:  # a refused request does not count against the rate
                if self._leases.get(lease.limit_id) is lease:
                    lease.left += 1
            raise
        return Admission(hold, spending)

    def settle(self, admission: Admission, *, cost_usd: float, tokens: int) -> None:
        """The request is over: it cost `cost_usd` (its usage row's, rounded there to 1e-9) and used `tokens`.
        Written by the background task."""
        if len(self._settlements) >= MAX_QUEUED_SETTLEMENTS:
            logger.error("budgets: settlements queue full; a hold is left to expire")
            return
        self._settlements.append((admission, round(cost_usd * NANO), tokens))
        self._wakeup.set()

    async def run(self) -> None:
        """Settle, give back stale leases and sweep until cancelled; then settle what is queued, within bounds."""
        last_sweep = last_error = -math.inf
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._until_stale())
                self._wakeup.clear()
                sweep = time.monotonic() - last_sweep >= SWEEP_SECONDS
                if sweep:
                    last_sweep = time.monotonic()
                try:
                    await finish_uncancelled(self._round(sweep=sweep), grace=DRAIN_SECONDS)
                except Exception as exc:
                    # The database away: the same failure every half second; one line a minute says it.
                    if time.monotonic() - last_error >= ERROR_EVERY_SECONDS:
                        last_error = time.monotonic()
                        logger.error(
                            "budgets: writing failed (%s: %s); it carries on", type(exc).__name__, exc
                        )
        finally:
            draining = asyncio.ensure_future(self._drain())
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(draining), DRAIN_SECONDS)
            left_to_finish(draining)
            if self._engine is not None:
                await self._engine.dispose()

    async def _round(self, *, sweep: bool) -> None:
        await self._write_settlements()
        await self._give_back_stale()
        if sweep:
            await self.sweep()

    async def sweep(self, *, unless_within: float = 0.0) -> None:
        """Release expired holds, reset ended periods, take old days off rolling windows; not again when a sweep
        began less than `unless_within` seconds ago (the sweeps a flood of refusals asks for are one)."""
        async with self._sweep_lock:
            began = time.monotonic()
            if began - self._swept_at < unless_within:
                return
            async with self.database.session() as session, session.begin():
                await store.sweep(session, now=time.time())
            self._swept_at = began

    async def _sweep_before_refusing(self) -> None:
        await self.sweep(unless_within=REFUSAL_SWEEP_SECONDS)

    async def _drain(self) -> None:
        self._returns += [lease for lease in self._leases.values() if lease.left > 0]
        self._leases.clear()
        await self._give_back_stale()
        await self._write_settlements()

    async def _reserve_or_refuse(
        self, hold: str, limits: tuple[AppliedLimit, ...], *, usd: int, tokens: int
    ) -> None:
        for attempt in range(3):
            try:
                await self._reserve(hold, limits, usd=usd, tokens=tokens)
                return
            except IntegrityError:
                if attempt == 0:
                    await self._sweep_before_refusing()
                    continue
            refusal = await self._spend_refusal(limits, usd=usd, tokens=tokens)
            if refusal is not None:
                raise refusal
        raise self._refused(
            limits[0].kind, "budget_exceeded", "A budget limit is spent; try again later.", retry_after=1
        )

    async def _reserve(self, hold: str, limits: tuple[AppliedLimit, ...], *, usd: int, tokens: int) -> None:
        expires_at = time.time() + self.reservation_seconds
        await self._write(
            store.reserve, hold=hold, limits=limits, usd=usd, tokens=tokens, expires_at=expires_at
        )

    async def _spend_refusal(
        self, limits: tuple[AppliedLimit, ...], *, usd: int, tokens: int
    ) -> QuotaExceededError | None:
        """The refusal naming the limit that does not fit now; None when every one does (a race: try again)."""
        async with self.database.session() as session:
            states = await store.states_by_id(session, [limit.id for limit in limits])
        now = time.time()
        for state in sorted(states, key=lambda state: (state.kind != USD, state.owner)):
            need = usd if state.kind == USD else tokens
            if state.spent + state.reserved + need <= state.cap:
                continue
            resets_at = state.resets_at or now
            period = Period(state.period, state.rolling_days).describe()
            left = max(state.cap - state.spent - state.reserved, 0)
            return self._refused(
                state.kind,
                "budget_exceeded",
                f"The {OWNER_NAMES.get(state.owner.partition(':')[0], 'owner')}'s {state.kind} limit "
                f"({shown(state.kind, state.cap)} per {period}) has {shown(state.kind, left)} left, less than "
                f"this request's worst case ({shown(state.kind, need)}); it resets at {_iso(resets_at)}.",
                retry_after=resets_at - now,
            )
        return None

    async def _admit_rate(self, limit: AppliedLimit) -> Lease:
        """One admission of a rate limit, from this instance's lease, or from a new lease.

        None left is not yet a refusal: the window may be full only of admissions leased and not used. This
        instance's own (a lease gone stale with some left) are given back at once, and the expired swept; then,
        once, it waits until every instance's leases that may still give some back have done so (or must have),
        and asks again."""
        settled = waited = False
        while True:
            lease = self._leases.get(limit.id)
            if lease is not None and lease.left > 0 and time.monotonic() - lease.taken_at < LEASE_SECONDS:
                lease.left -= 1
                return lease
            pending = self._leasing.get(limit.id)
            if pending is not None:
                await pending
                continue
            self._leasing[limit.id] = asyncio.get_running_loop().create_future()
            try:
                hold = new_id(HOLD_ID_PREFIX)
                grant = await self._lease(hold, limit)
            finally:
                self._leasing.pop(limit.id).set_result(None)
            if grant.granted == 0:
                if not settled:
                    settled = True
                    await self._give_back_stale()
                    await self._sweep_before_refusing()  # admissions older than the window refuse no one
                    continue
                if not waited:
                    waited = True
                    if (wait := await self._until_leases_close(limit)) > 0:
                        await asyncio.sleep(wait)
                        settled = False
                        continue
                refusal = await self._rate_refusal(limit)
                if refusal is None:  # the limit was removed a moment ago: nothing to count against
                    return Lease("", limit.id, 0)
                raise refusal
            if lease is not None and lease.left > 0 and self._leases.get(limit.id) is lease:
                self._returns.append(lease)  # not if the writer took it already: given back once
            self._left[limit.id] = grant.left
            lease = self._leases[limit.id] = Lease(hold, limit.id, grant.granted - 1)
            return lease

    async def _lease(self, hold: str, limit: AppliedLimit) -> store.Grant:
        known_left = self._left.get(limit.id, limit.cap)
        wanted = max(1, min(MAX_LEASE, limit.cap // LEASE_FRACTION, known_left // LEASE_SHRINK))
        expires_at = time.time() + WINDOW_SECONDS + LEASE_SECONDS
        return await self._write(
            store.lease, hold=hold, limit_id=limit.id, wanted=wanted, expires_at=expires_at
        )

    async def _until_leases_close(self, limit: AppliedLimit) -> float:
        """Seconds until the youngest lease of `limit` that may hold unused admissions (any instance's) has used
        them or given them back; 0 when none may."""
        async with self.database.session() as session:
            newest = await store.newest_open_lease(session, limit.id)
        if newest is None:
            return 0.0
        leased_at = newest - WINDOW_SECONDS - LEASE_SECONDS
        return max(0.0, leased_at + LEASE_SECONDS + GIVE_BACK_GRACE - time.time())

    async def _rate_refusal(self, limit: AppliedLimit) -> QuotaExceededError | None:
        """The refusal of a rate limit with no admission left; None when the limit no longer exists."""
        async with self.database.session() as session:
            if not await store.states_by_id(session, [limit.id]):
                return None
            oldest = (await store.oldest_holds(session, [limit.id])).get(limit.id)
        now = time.time()
        retry_at = oldest if oldest is not None else now + 1
        return self._refused(
            REQUESTS,
            "rate_limited",
            f"The {OWNER_NAMES.get(limit.owner.partition(':')[0], 'owner')}'s requests_per_minute limit "
            f"({limit.cap}) is reached; the window frees an admission at {_iso(retry_at)}.",
            retry_after=retry_at - now,
        )

    def _refused(self, kind: str, code: str, message: str, *, retry_after: float) -> QuotaExceededError:
        if self.metrics is not None:
            self.metrics.refused(kind)
        return QuotaExceededError(
            message, code=code, param=kind, headers={"Retry-After": str(max(1, math.ceil(retry_after)))}
        )

    def _until_stale(self) -> float:
        """How long the writer may sleep: half a lease's time, less when a lease goes stale sooner (its unused
        admissions are given back as soon as they may not be used)."""
        oldest = min((lease.taken_at for lease in self._leases.values()), default=math.inf)
        return min(LEASE_SECONDS / 2, max(MIN_WAKEUP_SECONDS, oldest + LEASE_SECONDS - time.monotonic()))

    async def _give_back_stale(self) -> None:
        """Give back the unused admissions of stale leases and of leases replaced. Locked, so that a caller
        returns only once the writer's give-backs in flight are written too."""
        async with self._give_back_lock:
            now = time.monotonic()
            for limit_id, lease in list(self._leases.items()):
                if now - lease.taken_at >= LEASE_SECONDS:
                    del self._leases[limit_id]
                    if lease.left > 0:
                        self._returns.append(lease)
            returns, self._returns = self._returns, []
            for lease in returns:
                async with self.database.session() as session, session.begin():
                    await store.give_back(
                        session, hold=lease.hold, limit_id=lease.limit_id, unused=lease.left
                    )

    async def _write_settlements(self) -> None:
        """Every settlement queued, in batches of `SETTLE_BATCH`, each batch in one transaction."""
        while self._settlements:
            batch = [self._settlements[index] for index in range(min(SETTLE_BATCH, len(self._settlements)))]
            settlements = [
                (
                    admission.hold,
                    [(limit, usd if limit.kind == USD else tokens) for limit in admission.limits],
                )
                for admission, usd, tokens in batch
            ]
            await self._write(store.settle, settlements=settlements, now=time.time())
            for _ in batch:
                self._settlements.popleft()

    async def _write(self, statement: Callable[..., Awaitable[T]], **values: Any) -> T:
        """`statement` of `gateway.budgets.store` run as it should be: on Postgres on an autocommit connection
        (its one statement is its transaction), on SQLite in a transaction of the shared database."""
        if self.database.is_postgres:
            try:
                async with self._autocommit().connect() as connection:
                    return await statement(connection, postgres=True, **values)
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
            # A pooled connection found dead (no ping on checkout): the pool drops it; once more on a fresh one.
            async with self._autocommit().connect() as connection:
                return await statement(connection, postgres=True, **values)
        async with self.database.session() as session, session.begin():
            return await statement(session, postgres=False, **values)

    def _autocommit(self) -> AsyncEngine:
        """Postgres connections of the budgets' own: autocommit (a statement is its transaction: no BEGIN and
        COMMIT round trips) and no ping on checkout (the pool's pre-ping is a round trip of its own)."""
        if self._engine is None:
            self._engine = create_engine(self.database.url, pre_ping=False).execution_options(
                isolation_level="AUTOCOMMIT"
            )
        return self._engine


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
