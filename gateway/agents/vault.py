"""The BYOK vault: provider keys sealed with AES-256-GCM, bound to their agent and provider, and their queries.

Each record has its own random 96-bit nonce; the associated data names the agent and the provider, so a
ciphertext copied to another agent's (or provider's) row fails to open. Each record also names the master key
it is sealed under (`key_id`, the first 8 hex digits of SHA-256 of the key), so a vault holding the current key
and previous ones opens every record, and `rotate` re-seals them all under the current key.
The plaintext is returned only to the caller that needs it for an upstream call; it is never logged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.asset_models import AgentVaultKey
from gateway.db.base import utcnow
from gateway.db.engine import Database
from gateway.keys import generated_vault_key, load_server_keys
from gateway.settings import Settings

logger = logging.getLogger("gateway.vault")

MASTER_KEY_BYTES = 32
NONCE_BYTES = 12
KEY_ID_CHARS = 8
MAX_PREFIX_CHARS = 8
MAX_API_KEY_CHARS = 4096
AAD_LABEL = b"gateway vault v1\x00"
PROVIDER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class VaultError(Exception):
    """A record that cannot be opened: tampered with, moved to another agent or provider, or sealed under a
    master key this vault does not hold."""


def master_key_id(key: bytes) -> str:
    """The id records carry for the master key `key`: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:KEY_ID_CHARS]


def display_prefix(api_key: str) -> str:
    """What listings show of a key: at most 8 characters, and never more than a quarter of it."""
    return api_key[: min(MAX_PREFIX_CHARS, len(api_key) // 4)]


def is_valid_provider(provider: str) -> bool:
    return PROVIDER_NAME.fullmatch(provider) is not None


def _associated_data(agent_id: str, provider: str) -> bytes:
    return AAD_LABEL + agent_id.encode() + b"\x00" + provider.encode()


@dataclass(frozen=True, slots=True)
class Sealed:
    """A sealed key as stored: the master key's id, the nonce and the ciphertext (with its GCM tag)."""

    key_id: str
    nonce: bytes
    ciphertext: bytes = field(repr=False)


class Vault:
    """Seals under the current master key; opens under the current one or any previous one it was given."""

    def __init__(self, current: bytes, *, previous: Iterable[bytes] = ()) -> None:
        keys = [current, *previous]
        if any(len(key) != MASTER_KEY_BYTES for key in keys):
            raise ValueError(f"vault master keys are {MASTER_KEY_BYTES} bytes")
        self.key_id = master_key_id(current)
        self._current = AESGCM(current)
        self._keyring = {master_key_id(key): AESGCM(key) for key in reversed(keys)}

    def __repr__(self) -> str:
        return f"Vault(key_id={self.key_id!r}, keys={len(self._keyring)})"

    def holds(self, key_id: str) -> bool:
        """Whether this vault can open records sealed under `key_id`."""
        return key_id in self._keyring

    def seal(self, plaintext: str, *, agent_id: str, provider: str) -> Sealed:
        """`plaintext` sealed under the current master key for this agent and provider."""
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._current.encrypt(nonce, plaintext.encode(), _associated_data(agent_id, provider))
        return Sealed(self.key_id, nonce, ciphertext)

    def open(self, sealed: Sealed, *, agent_id: str, provider: str) -> str:
        """The plaintext of `sealed`. Raises `VaultError` unless it was sealed for this agent and provider under
        a master key this vault holds, and is unaltered."""
        cipher = self._keyring.get(sealed.key_id)
        if cipher is None:
            raise VaultError(f"sealed under master key {sealed.key_id}, which this vault does not hold")
        try:
            plaintext = cipher.decrypt(sealed.nonce, sealed.ciphertext, _associated_data(agent_id, provider))
        except InvalidTag:
            raise VaultError(
                "the record does not open: altered, or not this agent's and provider's"
            ) from None
        return plaintext.decode()


def vault_for(settings: Settings, *, previous: Iterable[bytes] = ()) -> Vault:
    """The vault of these settings: sealing under `VAULT_MASTER_KEY` (or the generated key), opening also under
    `VAULT_PREVIOUS_MASTER_KEYS`, `previous`, and the generated key once `VAULT_MASTER_KEY` replaced it."""
    current = load_server_keys(settings).vault_master_key
    older = [*settings.vault_previous_master_keys, *previous]
    if (generated := generated_vault_key(settings)) is not None:
        older.append(generated)
    return Vault(current, previous=[key for key in older if key != current])


def sealed_of(record: AgentVaultKey) -> Sealed:
    return Sealed(record.key_id, record.nonce, record.ciphertext)


async def store_key(
    session: AsyncSession, vault: Vault, *, agent_id: str, provider: str, api_key: str
) -> AgentVaultKey:
    """Seal and store `api_key` as the agent's key for `provider`, replacing any key it had for it.
    Preconditions: the agent exists, `provider` is a valid provider name."""
    sealed = vault.seal(api_key, agent_id=agent_id, provider=provider)
    record = await session.get(AgentVaultKey, (agent_id, provider))
    if record is None:
        record = AgentVaultKey(agent_id=agent_id, provider=provider)
        session.add(record)
    record.key_id, record.nonce, record.ciphertext = sealed.key_id, sealed.nonce, sealed.ciphertext
    record.prefix = display_prefix(api_key)
    record.created_at = utcnow()
    await session.flush()
    return record


async def list_keys(session: AsyncSession, agent_id: str) -> list[AgentVaultKey]:
    """The agent's stored keys (sealed), by provider."""
    query = select(AgentVaultKey).where(AgentVaultKey.agent_id == agent_id).order_by(AgentVaultKey.provider)
    return list((await session.scalars(query)).all())


async def delete_key(session: AsyncSession, *, agent_id: str, provider: str) -> bool:
    """Deletes the agent's key for `provider`; False when it had none."""
    result = await session.execute(
        delete(AgentVaultKey).where(AgentVaultKey.agent_id == agent_id, AgentVaultKey.provider == provider)
    )
    return bool(getattr(result, "rowcount", 0))


async def byok_key(session: AsyncSession, agent_id: str, provider: str, vault: Vault) -> str | None:
    """The agent's own key for `provider`, in clear, for one upstream call; None when it stored none.
    Raises `VaultError` when the stored record does not open (never falls back to the platform key silently)."""
    record = await session.get(AgentVaultKey, (agent_id, provider))
    if record is None:
        return None
    return vault.open(sealed_of(record), agent_id=agent_id, provider=provider)


@dataclass(frozen=True, slots=True)
class Rotation:
    """What `rotate` did: records re-sealed, records already current, records it could not open."""

    resealed: int
    current: int
    unreadable: list[tuple[str, str]]  # (agent id, provider)


async def rotate(session: AsyncSession, vault: Vault) -> Rotation:
    """Re-seal every record not under the current master key, within the caller's transaction. Records it
    cannot open are left as they are and reported; the others are re-sealed all the same."""
    resealed = current = 0
    unreadable: list[tuple[str, str]] = []
    records = await session.scalars(select(AgentVaultKey).with_for_update())
    for record in records:
        if record.key_id == vault.key_id:
            current += 1
            continue
        try:
            plaintext = vault.open(sealed_of(record), agent_id=record.agent_id, provider=record.provider)
        except VaultError as exc:
            logger.warning("vault record of %s/%s not re-sealed: %s", record.agent_id, record.provider, exc)
            unreadable.append((record.agent_id, record.provider))
            continue
        sealed = vault.seal(plaintext, agent_id=record.agent_id, provider=record.provider)
        record.key_id, record.nonce, record.ciphertext = sealed.key_id, sealed.nonce, sealed.ciphertext
        resealed += 1
    await session.flush()
    return Rotation(resealed, current, unreadable)


async def rotate_database(database_url: str, vault: Vault) -> Rotation:
    """`gateway vault rotate`: re-seal every record of the database under `vault`'s current key, in one
    transaction."""
    database = Database(database_url)
    database.open()
    try:
        async with database.session() as session, session.begin():
            return await rotate(session, vault)
    finally:
        await database.close()
