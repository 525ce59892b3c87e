"""`gateway.fields`: what the databases are spared, as data (over HTTP: tests/integration/test_hostile_input.py)."""

from __future__ import annotations

import pytest

from gateway.agents.agent_keys import AGENT_KEY_ID_PREFIX
from gateway.agents.files import FILE_ID_PREFIX
from gateway.agents.service import AGENT_PREFIX
from gateway.db.agent_models import Agent, AgentMessage
from gateway.db.models import UsageEvent
from gateway.errors import InvalidRequestError
from gateway.fields import check_document, check_text, column_length, is_id, query_int, storable_text
from gateway.ids import new_id


def test_lengths_come_from_the_models() -> None:
    assert column_length(Agent.agent_name) == 200
    assert column_length(UsageEvent.path) == 500
    assert column_length(AgentMessage.content) is None  # TEXT


@pytest.mark.parametrize("text", ["a\x00b", "\ud800", "x\udfff", "n" * 201])
def test_text_that_cannot_be_stored_is_400_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_text(text, param="agent_name", column=Agent.agent_name)
    assert caught.value.param == "agent_name"


def test_storable_text_passes_unchanged() -> None:
    assert check_text("é 漢字 🙂" * 10, param="name", column=Agent.agent_name) == "é 漢字 🙂" * 10


@pytest.mark.parametrize(
    ("document", "param"),
    [
        ({"ok": "x", "email": "a\x00@example.com"}, "email"),
        ({"scopes": ["chat", "\ud800"]}, "scopes"),
        ({"meta": {"deep": {"deeper": "\x00"}}}, "meta"),
        ({"meta": {"k\x00": 1}}, "meta"),
        ({"k\x00": 1}, "k\ufffd"),
    ],
)
def test_a_document_is_refused_at_its_top_level_field(document: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_document(document)
    assert caught.value.param == param


def test_storable_text_replaces_and_cuts() -> None:
    assert storable_text("/v1/\x00/\ud800", column=UsageEvent.path) == "/v1/\ufffd/\ufffd"
    assert storable_text("m" * 10_000, column=UsageEvent.model) == "m" * 200


@pytest.mark.parametrize("prefix", [AGENT_PREFIX, FILE_ID_PREFIX, AGENT_KEY_ID_PREFIX, "tok", "msg"])
def test_ids_the_gateway_makes_have_the_form(prefix: str) -> None:
    assert is_id(new_id(prefix), prefix)


@pytest.mark.parametrize(
    "value",
    [
        "ocs_",
        "ocs_\x00",
        "tok_" + "a" * 24,
        "ocs_" + "a" * 23,
        "ocs_" + "a" * 25,
        "ocs_" + "A" * 24,
        "ocs_" + "g" * 24,
        "ocs_" + "a" * 24 + "\n",
        "ocs_" + "٣" * 24,
    ],
)
def test_other_ids_are_not_of_the_form(value: str) -> None:
    assert not is_id(value, "ocs")


@pytest.mark.parametrize(
    "raw",
    [
        "\u00b2",
        "\uff11",
        "\u0663",
        "5" * 5000,
        "0" * 5000,
        "-1",
        "+1",
        " 1",
        "1 ",
        "1e3",
        "",
        "0",
        "501",
        "0x10",
        "1\n",
    ],
)
def test_query_integers_other_than_ascii_digits_in_range_are_400(raw: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        query_int(raw, param="limit", low=1, high=500)
    assert caught.value.param == "limit"


def test_query_integers() -> None:
    assert query_int("500", param="limit", low=1, high=500) == 500
    assert query_int("007", param="limit", low=1, high=500) == 7
    assert query_int("9" * 64, param="days", low=1, high=None) == 10**64 - 1
    assert query_int(None, param="limit", low=1, high=500, default=50) == 50
    with pytest.raises(InvalidRequestError):
        query_int(None, param="first", low=0, high=10)
