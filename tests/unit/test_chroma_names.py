"""The namespace is one-to-one: no two (user, name) pairs give the same Chroma name, whatever they contain."""

from __future__ import annotations

import itertools

import pytest

from gateway.chroma.names import CHROMA_NAME, MAX_NAME, Namespace
from gateway.errors import InvalidRequestError

USERS = ["usr_a", "usr_a__b", "usr_a_", "a", "a__", "__", "usr_a.b", "üser", "usr-a", "usr_A"]
NAMES = ["db1", "b__db1", "db1__x", "_b_db", "x.y", "a-b", "zz9"]
SEPARATORS = ["__", "_", ".", "-", "._-"]


@pytest.mark.parametrize("separator", SEPARATORS)
def test_no_two_users_and_names_collide(separator: str) -> None:
    stored: dict[str, tuple[str, str]] = {}
    for user, name in itertools.product(USERS, NAMES):
        try:
            chroma_name = Namespace(user, separator).database(name)
        except InvalidRequestError:
            continue
        assert chroma_name not in stored, (user, name, stored.get(chroma_name))
        stored[chroma_name] = (user, name)
        assert CHROMA_NAME.match(chroma_name) and ".." not in chroma_name
    assert len(stored) > 40


def test_a_name_comes_back_as_the_user_sent_it() -> None:
    namespace = Namespace("usr_1", "__")
    assert namespace.strip(namespace.database("my-db")) == "my-db"
    assert namespace.owns(namespace.database("my-db"))
    assert not Namespace("usr_12", "__").owns(namespace.database("my-db"))
    assert not namespace.owns(Namespace("usr_12", "__").database("my-db"))


@pytest.mark.parametrize(
    "name", ["", "ab", "-ab", "ab-", "a..b", "a/b", "a b", "a%2Fb", "é-db", "x" * (MAX_NAME + 1)]
)
def test_invalid_names_are_a_400_that_names_the_parameter(name: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        Namespace("usr_1", "__").database(name)
    assert refused.value.param == "database"


def test_a_name_too_long_with_the_prefix_says_how_long_it_may_be() -> None:
    namespace = Namespace("usr_1", "__")
    room = MAX_NAME - len(namespace.prefix)
    assert namespace.database("x" * room)
    with pytest.raises(InvalidRequestError, match=f"at most {room} characters"):
        namespace.database("x" * (room + 1))


def test_messages_lose_the_own_prefix_and_hide_anyone_elses() -> None:
    mine, theirs = Namespace("usr_1", "__"), Namespace("usr_2", "__")
    text = f"Database [{mine.database('db1')}] and [{theirs.database('db2')}]"
    assert mine.scrub(text) == "Database [db1] and [[hidden]]"
