"""The governance policy: each rule on messages that should and should not trip it, and the verdict per mode."""

from __future__ import annotations

import time

import pytest

from gateway.agents.governance import (
    ALLOW,
    DENY,
    ENFORCING,
    FLAG,
    TRANSPARENT,
    Finding,
    GovernancePolicy,
    card_number_spans,
    decide,
    luhn_valid,
)

POLICY = GovernancePolicy(max_chars=200, blocked_patterns=[r"(?i)\bproject\s+nightingale\b", "DROP TABLE"])


def rules(text: str, policy: GovernancePolicy = POLICY) -> list[str]:
    return [finding.rule for finding in policy.findings(text)]


@pytest.mark.parametrize(
    "number",
    [
        "4111111111111111",
        "5555555555554444",
        "378282246310005",
        "6011111111111117",
        "4012888888881881",
        "0" * 16,
    ],
)
def test_luhn_accepts_valid_numbers(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize(
    "number", ["4111111111111112", "5555555555554440", "378282246310006", "1234567890123"]
)
def test_luhn_refuses_invalid_numbers(number: str) -> None:
    assert not luhn_valid(number)


@pytest.mark.parametrize(
    ("text", "spans"),
    [
        ("4111111111111111", [(0, 16)]),
        ("pay with 4111 1111 1111 1111 today", [(9, 28)]),
        ("4111-1111-1111-1111", [(0, 19)]),
        ("card 4111 1111 1111 1111 123", [(5, 24)]),  # followed by a CVV
        ("ref 12 4111 1111 1111 1111", [(7, 26)]),  # preceded by other digits
        ("amex 3782 822463 10005", [(5, 22)]),
        ("two: 6011111111111117 and 4012888888881881", [(5, 21), (26, 42)]),
    ],
)
def test_card_numbers_are_found_where_they_are(text: str, spans: list[tuple[int, int]]) -> None:
    assert list(card_number_spans(text)) == spans


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # fails Luhn
        "411111111111",  # 12 digits: too short
        "41111111111111111111",  # 20 digits in one group: not a card
        "call 555 0100 or 555 0199",
        "4111  1111  1111  1111",  # two separators: not one number
        "version 1.2.3.4.5.6.7.8.9.10.11.12.13",
    ],
)
def test_card_lookalikes_are_not_cards(text: str) -> None:
    assert list(card_number_spans(text)) == []


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
        "sk-abcdefghijklmnopqrstuvwx",
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz",
        "gw_" + "A" * 43,
        "ak_" + "b" * 40,
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_" + "a" * 36,
        "xoxb-123456789012-abcdefghij",
        "AIza" + "B" * 35,
        "sk_live_" + "c" * 24,
        "-----BEGIN RSA PRIVATE KEY-----",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ],
)
def test_secrets_are_found(secret: str) -> None:
    assert rules(f"here it is: {secret} ok") == ["secret"]


@pytest.mark.parametrize(
    "text",
    [
        "ask-me-anything-please-right-now",
        "risk-free investing for everyone today",
        "the sk- prefix",
        "AKIA is a word",
    ],
)
def test_secret_lookalikes_are_not_secrets(text: str) -> None:
    assert "secret" not in rules(text)


@pytest.mark.parametrize("address", ["jane@example.com", "a.b+tag@mail.example.co.uk", "X_Y-z@sub-domain.io"])
def test_email_addresses_are_found(address: str) -> None:
    findings = list(POLICY.findings(f"write to {address}."))
    assert [f.rule for f in findings] == ["email_address"]
    assert (findings[0].start, findings[0].end) == (9, 9 + len(address))


@pytest.mark.parametrize(
    "text", ["user@localhost", "@handle on twitter", "a@b", "email me at example dot com"]
)
def test_email_lookalikes_are_not_addresses(text: str) -> None:
    assert "email_address" not in rules(text)


def test_blocked_patterns_come_from_configuration() -> None:
    assert rules("what is Project  Nightingale?") == ["blocked_pattern"]
    assert rules("'; DROP TABLE users; --") == ["blocked_pattern"]
    assert rules("drop table") == []
    assert rules("what is Project Nightingale?", GovernancePolicy(max_chars=100)) == []


def test_a_message_over_the_limit_is_found() -> None:
    assert rules("x" * 200) == []
    findings = list(POLICY.findings("x" * 201))
    assert [f.rule for f in findings] == ["max_length"]
    assert "201" in findings[0].message and "200" in findings[0].message


def test_findings_never_quote_what_they_found() -> None:
    secret = "sk-proj-abcdefghijklmnopqrstuvwxyz012345"
    text = f"{secret} jane@example.com 4111 1111 1111 1111"

    findings = list(POLICY.findings(text))

    assert {f.rule for f in findings} == {"secret", "email_address", "card_number"}
    dumped = str([f.as_json() for f in findings])
    assert secret not in dumped and "jane@" not in dumped and "4111" not in dumped


def test_a_clean_message_is_allowed_in_both_modes() -> None:
    for mode in (TRANSPARENT, ENFORCING):
        verdict = POLICY.evaluate("What is the capital of France?", mode=mode)
        assert (verdict.mode, verdict.decision, verdict.findings, verdict.blocks) == (mode, ALLOW, (), False)


def test_transparent_flags_and_never_blocks() -> None:
    verdict = POLICY.evaluate("card 4111 1111 1111 1111", mode=TRANSPARENT)

    assert verdict.decision == FLAG
    assert not verdict.blocks


def test_enforcing_denies() -> None:
    verdict = POLICY.evaluate("card 4111 1111 1111 1111", mode=ENFORCING)

    assert verdict.decision == DENY
    assert verdict.blocks


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError):
        decide("lenient", [Finding("max_length", "policy", "too long")])


def test_a_policy_needs_a_positive_limit() -> None:
    with pytest.raises(ValueError):
        GovernancePolicy(max_chars=0)


@pytest.mark.parametrize(
    "hostile",
    [
        "1 " * 131_072,
        "1" * 262_144,
        "a" * 262_144,
        "x@" * 131_072,
        "eyJ" * 87_381,
        "sk-" * 87_381,
        "a." * 131_072,
    ],
)
def test_hostile_messages_are_checked_in_bounded_time(hostile: str) -> None:
    started = time.perf_counter()

    list(POLICY.findings(hostile))

    # A catastrophic backtracking takes minutes on these; 15 s leaves room for the suite's busiest moments.
    assert time.perf_counter() - started < 15
