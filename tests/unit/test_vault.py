"""The vault's sealing: AES-256-GCM bound to agent and provider, a fresh nonce per record, key ids and rotation."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from gateway.agents.vault import NONCE_BYTES, Sealed, Vault, VaultError, display_prefix, master_key_id
from gateway.settings import Settings, SettingsError

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SECRET = "sk-proj-0123456789abcdefghijklmnop"


def test_a_sealed_key_opens_for_its_agent_and_provider() -> None:
    vault = Vault(KEY)
    sealed = vault.seal(SECRET, agent_id="ocs_a", provider="openai")

    assert vault.open(sealed, agent_id="ocs_a", provider="openai") == SECRET
    assert SECRET.encode() not in sealed.ciphertext
    assert len(sealed.nonce) == NONCE_BYTES
    assert sealed.key_id == hashlib.sha256(KEY).hexdigest()[:8] == master_key_id(KEY)


@pytest.mark.parametrize(
    ("agent_id", "provider"), [("ocs_b", "openai"), ("ocs_a", "mistral"), ("ocs_ab", "")]
)
def test_a_sealed_key_does_not_open_for_another_agent_or_provider(agent_id: str, provider: str) -> None:
    vault = Vault(KEY)
    sealed = vault.seal(SECRET, agent_id="ocs_a", provider="openai")

    with pytest.raises(VaultError):
        vault.open(sealed, agent_id=agent_id, provider=provider)


def test_the_agent_and_provider_cannot_be_shifted_into_each_other() -> None:
    vault = Vault(KEY)
    sealed = vault.seal(SECRET, agent_id="ocs_a", provider="b")

    with pytest.raises(VaultError):
        vault.open(sealed, agent_id="ocs_ab", provider="")


def test_every_seal_takes_a_fresh_nonce() -> None:
    vault = Vault(KEY)
    nonces = {vault.seal(SECRET, agent_id="ocs_a", provider="openai").nonce for _ in range(200)}

    assert len(nonces) == 200


@pytest.mark.parametrize("part", ["nonce", "ciphertext"])
def test_a_flipped_bit_is_refused(part: str) -> None:
    vault = Vault(KEY)
    sealed = vault.seal(SECRET, agent_id="ocs_a", provider="openai")
    value = bytearray(getattr(sealed, part))
    value[0] ^= 1
    altered = Sealed(
        sealed.key_id,
        bytes(value) if part == "nonce" else sealed.nonce,
        bytes(value) if part == "ciphertext" else sealed.ciphertext,
    )

    with pytest.raises(VaultError):
        vault.open(altered, agent_id="ocs_a", provider="openai")


def test_a_record_under_an_unknown_key_is_refused_by_id() -> None:
    sealed = Vault(OTHER_KEY).seal(SECRET, agent_id="ocs_a", provider="openai")

    with pytest.raises(VaultError, match=master_key_id(OTHER_KEY)):
        Vault(KEY).open(sealed, agent_id="ocs_a", provider="openai")


def test_a_vault_with_previous_keys_opens_old_records_and_seals_under_the_current_one() -> None:
    old_record = Vault(OTHER_KEY).seal(SECRET, agent_id="ocs_a", provider="openai")
    vault = Vault(KEY, previous=[OTHER_KEY])

    assert vault.open(old_record, agent_id="ocs_a", provider="openai") == SECRET
    assert vault.seal(SECRET, agent_id="ocs_a", provider="openai").key_id == master_key_id(KEY)
    assert vault.holds(master_key_id(OTHER_KEY))


def test_master_keys_are_32_bytes() -> None:
    with pytest.raises(ValueError):
        Vault(os.urandom(16))


def test_the_vault_never_shows_its_keys() -> None:
    assert KEY.hex() not in repr(Vault(KEY)) and repr(KEY) not in repr(Vault(KEY))


@pytest.mark.parametrize(
    ("api_key", "prefix"),
    [("sk-proj-0123456789abcdefghijklmnop", "sk-proj-"), ("short-key", "sh"), ("abc", "")],
)
def test_listings_show_at_most_a_quarter_of_a_key(api_key: str, prefix: str) -> None:
    assert display_prefix(api_key) == prefix


@pytest.mark.parametrize(
    "encoded",
    [
        KEY.hex(),
        KEY.hex().upper(),
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
    ],
)
def test_the_master_key_is_read_as_hex_or_base64(encoded: str) -> None:
    settings = Settings.from_mapping({"VAULT_MASTER_KEY": encoded})

    assert settings.vault_master_key == KEY


def test_url_safe_base64_is_accepted() -> None:
    key = bytes([0xFB, 0xFF] * 16)
    encoded = base64.urlsafe_b64encode(key).decode()
    assert "-" in encoded or "_" in encoded
    assert Settings.from_mapping({"VAULT_MASTER_KEY": encoded}).vault_master_key == key


@pytest.mark.parametrize(
    "encoded",
    [os.urandom(16).hex(), os.urandom(33).hex(), "not a key!"],
    # Fixed ids: every pytest-xdist worker must collect the same tests.
    ids=["16 bytes", "33 bytes", "not a key"],
)
def test_a_master_key_that_is_not_32_bytes_stops_start_up(encoded: str) -> None:
    with pytest.raises(SettingsError, match="VAULT_MASTER_KEY"):
        Settings.from_mapping({"VAULT_MASTER_KEY": encoded})


def test_previous_keys_are_a_list() -> None:
    settings = Settings.from_mapping({"VAULT_PREVIOUS_MASTER_KEYS": f"{KEY.hex()}, {OTHER_KEY.hex()}"})

    assert settings.vault_previous_master_keys == (KEY, OTHER_KEY)
