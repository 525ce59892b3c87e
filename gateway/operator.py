"""The operator's user commands (`gateway users create|list|disable|limits`), run against `DATABASE_URL`."""

from __future__ import annotations

import getpass
import sys
import time
from typing import TextIO

from gateway.auth.passwords import WeakPasswordError
from gateway.auth.principals import PrincipalCache
from gateway.auth.revocations import LIMITS, USER, Revocations
from gateway.auth.users import (
    InvalidEmailError,
    UserExistsError,
    create_user,
    disable_user,
    find_user_by_email,
    list_users,
)
from gateway.budgets.limits import KINDS, LimitChanges, owner, parse_limits
from gateway.budgets.store import set_limits
from gateway.budgets.views import limit_views
from gateway.db.agent_models import Agent
from gateway.db.engine import Database
from gateway.errors import ConflictError, InvalidRequestError


class OperatorError(Exception):
    """A command that cannot be done as asked; its message is for the operator."""


def read_password(stdin: TextIO = sys.stdin) -> str:
    """From a prompt (asked twice), or from standard input when it is not a terminal: the first line, and an
    optional identical second line as confirmation."""
    if stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat it: ") != password:
            raise OperatorError("the passwords differ")
        return password
    lines = stdin.read().splitlines()
    if not lines:
        raise OperatorError("no password on standard input")
    if len(lines) > 1 and lines[1] and lines[1] != lines[0]:
        raise OperatorError("the password and its confirmation differ")
    return lines[0]


async def create(database_url: str, *, email: str, password: str, is_admin: bool) -> str:
    database = Database(database_url)
    database.open()
    try:
        async with database.session() as session, session.begin():
            user = await create_user(session, email=email, password=password, is_admin=is_admin)
            return f"created {user.id} {user.email}{' (admin)' if is_admin else ''}"
    except (InvalidEmailError, WeakPasswordError, UserExistsError) as exc:
        raise OperatorError(str(exc)) from None
    finally:
        await database.close()


async def listing(database_url: str) -> str:
    database = Database(database_url)
    database.open()
    try:
        async with database.session() as session:
            users = await list_users(session)
    finally:
        await database.close()
    rows = [
        f"{user.id}\t{user.email}\t{'admin' if user.is_admin else 'user'}\t"
        f"{'disabled' if user.disabled_at else 'active'}\t{user.created_at.isoformat()}"
        for user in users
    ]
    return "\n".join(["id\temail\trole\tstate\tcreated_at", *rows])


async def disable(database_url: str, *, email: str) -> str:
    """Disables the user, announced as every revocation is (an event row, and a NOTIFY on Postgres): every running
    instance refuses their credentials within a second of the commit."""
    database = Database(database_url)
    database.open()
    try:
        async with database.session() as session, session.begin():
            user = await disable_user(session, email)
            if user is None:
                raise OperatorError(f"no user with the email {email}")
            await Revocations(database, PrincipalCache()).announce(session, USER, user.id)
            return f"disabled {user.id} {user.email}"
    finally:
        await database.close()


async def limits(
    database_url: str,
    *,
    email: str,
    agent_id: str | None = None,
    changes: dict[str, object] | None = None,
    clear: bool = False,
) -> str:
    """Sets (`changes`, as the API's `limits` object) or clears the user's limits, or its agent's, announced as a
    revocation is, so that every running instance applies them within a second; shows them with their counters."""
    database = Database(database_url)
    database.open()
    try:
        async with database.session() as session:
            async with session.begin():
                user = await find_user_by_email(session, email)
                if user is None:
                    raise OperatorError(f"no user with the email {email}")
                who = owner("user", user.id)
                if agent_id is not None:
                    agent = await session.get(Agent, agent_id)
                    if agent is None or agent.user_id != user.id:
                        raise OperatorError(f"{email} has no agent {agent_id}")
                    who = owner("agent", agent_id)
                parsed = LimitChanges(dict.fromkeys(KINDS), None) if clear else None
                if changes:
                    try:
                        parsed = parse_limits(changes, field="limits")
                    except InvalidRequestError as exc:
                        raise OperatorError(exc.message) from None
                if parsed is not None:
                    try:
                        await set_limits(session, who, parsed, now=time.time())
                    except ConflictError as exc:
                        raise OperatorError(exc.message) from None
                    await Revocations(database, PrincipalCache()).announce(session, LIMITS, who)
            views = (await limit_views(session, [who])).get(who, {})
    finally:
        await database.close()
    rows = [
        "\t".join(
            str(value)
            for value in (
                kind,
                view["limit"],
                view["period"] if view["rolling_days"] is None else f"{view['rolling_days']} days",
                view["spent"],
                view["reserved"],
                view["remaining"],
                view["resets_at"] or "-",
            )
        )
        for kind, view in sorted(views.items())
    ]
    return "\n".join(
        [f"limits of {who}", "kind\tlimit\tperiod\tspent\treserved\tremaining\tresets_at", *rows]
    )
