"""Passwords: argon2id, rehashed when the parameters change, and the same work for an unknown user."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from gateway.auth.passwords import WeakPasswordError, check_password_strength, hash_password, verify_password


def test_hashes_are_argon2id_and_verify() -> None:
    stored = hash_password("correct horse battery staple")

    assert stored.startswith("$argon2id$")
    assert verify_password(stored, "correct horse battery staple") == (True, None)
    assert verify_password(stored, "wrong") == (False, None)


def test_a_hash_with_outdated_parameters_is_replaced_on_success() -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("correct horse battery staple")

    matches, new_hash = verify_password(weak, "correct horse battery staple")

    assert matches
    assert new_hash is not None and new_hash != weak
    assert verify_password(new_hash, "correct horse battery staple") == (True, None)


def test_an_unknown_user_never_matches() -> None:
    assert verify_password(None, "no such user: this only spends the same time as a real check") == (
        False,
        None,
    )


def test_a_broken_stored_hash_does_not_match() -> None:
    assert verify_password("not a hash", "anything") == (False, None)


@pytest.mark.parametrize("password", ["short", "x" * 1025])
def test_passwords_outside_the_accepted_lengths_are_weak(password: str) -> None:
    with pytest.raises(WeakPasswordError):
        check_password_strength(password)
