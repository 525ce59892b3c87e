"""Passwords, hashed with argon2id; a check against an unknown user costs the same as against a known one.

Hashing runs on threads of its own, as many as there are CPUs: argon2 is CPU-bound, so more threads would not
check faster, and on the event loop's default executor a flood of logins queued in front of everything else
that uses it (the resolver of a new database connection, the usage journal's fsync)."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024

# Its threads start on first use.
_hashing = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="argon2")
_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
# Verified against when the email is unknown, so that both answers take about the same time.
_UNKNOWN_USER_HASH = _hasher.hash("no such user: this only spends the same time as a real check")


class WeakPasswordError(ValueError):
    """The password is too short or too long to accept."""


def check_password_strength(password: str) -> None:
    """Raises `WeakPasswordError` for a password outside the accepted lengths."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPasswordError(f"The password must have at least {MIN_PASSWORD_LENGTH} characters.")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPasswordError(f"The password must have at most {MAX_PASSWORD_LENGTH} characters.")


def hash_password(password: str) -> str:
    """The argon2id hash of `password` (blocking: call it from a thread on the event loop)."""
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> tuple[bool, str | None]:
    """(matches, new hash when the stored one used outdated parameters). `stored_hash` None: an unknown user."""
    try:
        _hasher.verify(stored_hash or _UNKNOWN_USER_HASH, password)
    except (VerificationError, InvalidHashError):
        return False, None
    if stored_hash is None:
        return False, None
    return True, _hasher.hash(password) if _hasher.check_needs_rehash(stored_hash) else None


async def hash_password_off_loop(password: str) -> str:
    """`hash_password` on a hashing thread: argon2 is deliberately slow and must not stall the loop."""
    return await asyncio.get_running_loop().run_in_executor(_hashing, hash_password, password)


async def verify_password_off_loop(stored_hash: str | None, password: str) -> tuple[bool, str | None]:
    """`verify_password` on a hashing thread: argon2 is deliberately slow and must not stall the loop."""
    return await asyncio.get_running_loop().run_in_executor(_hashing, verify_password, stored_hash, password)
