"""The operator's user commands (`gateway users create|list|disable`), run against `DATABASE_URL`."""

from __future__ import annotations

import getpass
import sys
from typing import TextIO

from gateway.auth.passwords import WeakPasswordError
from gateway.auth.principals import PrincipalCache
from gateway.auth.revocations import USER, Revocations
from gateway.auth.users import InvalidEmailError, UserExistsError, create_user, disable_user, list_users
from gateway.db.engine import Database


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
