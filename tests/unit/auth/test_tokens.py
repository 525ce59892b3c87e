"""API token format: a tag keyed by the server tells made-up tokens apart without a lookup."""

from __future__ import annotations

import secrets

from gateway.auth.tokens import TokenCodec, display_prefix

KEY = secrets.token_bytes(32)


def test_a_new_token_is_well_formed_and_long() -> None:
    codec = TokenCodec(KEY)
    token = codec.new_api_token()

    assert token.startswith("gw_") and len(token) == 3 + 43 + 6
    assert codec.is_well_formed_api_token(token)
    assert display_prefix(token) == token[:11]


def test_a_changed_character_or_another_key_breaks_the_tag() -> None:
    codec = TokenCodec(KEY)
    token = codec.new_api_token()
    flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]

    assert not codec.is_well_formed_api_token(flipped)
    assert not TokenCodec(secrets.token_bytes(32)).is_well_formed_api_token(token)
    assert not codec.is_well_formed_api_token(token[:-1])
    assert not codec.is_well_formed_api_token("gw_" + "x" * 49)


def test_the_lookup_hash_is_keyed_and_stable() -> None:
    codec = TokenCodec(KEY)
    token = codec.new_api_token()

    assert codec.lookup_hash(token) == codec.lookup_hash(token)
    assert len(codec.lookup_hash(token)) == 64
    assert codec.lookup_hash(token) != TokenCodec(secrets.token_bytes(32)).lookup_hash(token)
