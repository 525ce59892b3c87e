"""Users: creating, finding, listing and disabling them (the operator CLI and the session routes share these)."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.auth.passwords import check_password_strength, hash_password_off_loop
from gateway.db.base import iso, utcnow
from gateway.db.models import User
from gateway.ids import new_id

# Deliberately loose: one @, something on each side, a dot in the domain, no spaces.
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class UserExistsError(ValueError):
    """A user with that email already exists."""


class InvalidEmailError(ValueError):
    """The text is not an email address."""


def normalise_email(email: str) -> str:
    """The stored form of an email (trimmed, lower-cased); raises `InvalidEmailError`."""
    normalised = email.strip().lower()
    if len(normalised) > 320 or not EMAIL.fullmatch(normalised):
        raise InvalidEmailError("That is not an email address.")
    return normalised


async def create_user(session: AsyncSession, *, email: str, password: str, is_admin: bool = False) -> User:
    """A new user. Raises `InvalidEmailError`, `WeakPasswordError` or `UserExistsError`."""
    email = normalise_email(email)
    check_password_strength(password)
    password_hash = await hash_password_off_loop(password)  # before the first statement: no connection held
    user = User(
        id=new_id("usr"),
        email=email,
        password_hash=password_hash,
        is_admin=is_admin,
        created_at=utcnow(),
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        raise UserExistsError(f"A user with the email {email} already exists.") from None
    return user


async def find_user_by_email(session: AsyncSession, email: str) -> User | None:
    try:
        normalised = normalise_email(email)
    except InvalidEmailError:
        return None
    return await session.scalar(select(User).where(User.email == normalised))


async def list_users(session: AsyncSession) -> list[User]:
    return list((await session.scalars(select(User).order_by(User.created_at, User.id))).all())


async def disable_user(session: AsyncSession, email: str) -> User | None:
    """Disables the user (their credentials stop working); None when there is no such user."""
    user = await find_user_by_email(session, email)
    if user is not None and user.disabled_at is None:
        user.disabled_at = utcnow()
    return user


def user_json(user: User) -> dict[str, object]:
    """A user as the API shows it."""
    return {
        "id": user.id,
        "email": user.email,
        "is_admin": user.is_admin,
        "created_at": iso(user.created_at),
        "disabled_at": iso(user.disabled_at),
    }
