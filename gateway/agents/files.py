"""Agents' files: recording a received upload under the tier's quota, listing, finding and deleting them.

The record is written in a transaction that locks the agent and counts again, so concurrent uploads cannot
overshoot the quota; only then are the bytes made readable. Receiving the bytes is `gateway.agents.uploads`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

from anyio import CancelScope
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.agents.quotas import lock_agent, storage_used
from gateway.agents.storage import Storage
from gateway.agents.uploads import Received, StorageQuotaError, receive_upload
from gateway.db.asset_models import AgentFile
from gateway.db.base import utcnow
from gateway.db.engine import Database
from gateway.ids import new_id
from gateway.tiers import Tier

FILE_ID_PREFIX = "file"


def attachment_disposition(filename: str) -> str:
    """`Content-Disposition` for a download: an ASCII fallback and the exact name as RFC 8187 UTF-8."""
    fallback = "".join(ch if " " <= ch <= "~" and ch not in '"\\;%' else "_" for ch in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


async def accept_upload(
    database: Database,
    storage: Storage,
    body: AsyncIterator[bytes],
    content_type: str | None,
    *,
    agent_id: str,
    tier: Tier,
    max_bytes: int,
) -> AgentFile:
    """Receive a multipart upload into storage and record it for the agent. Raises the errors of
    `gateway.agents.uploads`: malformed, over `max_bytes`, or over the tier's storage bytes or files."""
    async with database.session() as session:
        stored_bytes, stored_files = await storage_used(session, agent_id)
    if tier.files is not None and stored_files >= tier.files:
        raise StorageQuotaError(f"The agent already stores its {tier.files} files.")
    quota_bytes = None if tier.storage_bytes is None else max(0, tier.storage_bytes - stored_bytes)
    received = await receive_upload(body, content_type, storage, max_bytes=max_bytes, quota_bytes=quota_bytes)
    return await store_upload(database, storage, received, agent_id=agent_id, tier=tier)


async def store_upload(
    database: Database, storage: Storage, received: Received, *, agent_id: str, tier: Tier
) -> AgentFile:
    """Record `received` and make its bytes readable, unless that takes the agent past its tier's storage bytes
    or files (`StorageQuotaError`, the upload aborted). Counted after locking the agent, so it holds."""
    file_id = new_id(FILE_ID_PREFIX)
    key = f"{agent_id}/{file_id}"
    placed = False
    try:
        async with database.session() as session, session.begin():
            await lock_agent(session, agent_id)
            record = AgentFile(
                id=file_id,
                agent_id=agent_id,
                filename=received.filename,
                content_type=received.content_type,
                size=received.size,
                sha256=received.sha256,
                storage_key=key,
                created_at=utcnow(),
            )
            session.add(record)
            await session.flush()  # written before counting: on SQLite that takes the one writer's lock
            stored_bytes, files = await storage_used(session, agent_id)
            if tier.storage_bytes is not None and stored_bytes > tier.storage_bytes:
                raise StorageQuotaError("The file would exceed the agent's storage quota.")
            if tier.files is not None and files > tier.files:
                raise StorageQuotaError(f"The agent already stores its {tier.files} files.")
            await received.upload.commit(key)
            placed = True
        return record
    except BaseException:
        with CancelScope(shield=True):
            if placed:
                await storage.delete(key)
            else:
                await received.upload.abort()
        raise


async def list_files(session: AsyncSession, agent_id: str) -> list[AgentFile]:
    """The agent's files, newest first."""
    query = (
        select(AgentFile)
        .where(AgentFile.agent_id == agent_id)
        .order_by(AgentFile.created_at.desc(), AgentFile.id.desc())
    )
    return list((await session.scalars(query)).all())


async def find_file(session: AsyncSession, *, agent_id: str, file_id: str) -> AgentFile | None:
    return await session.scalar(
        select(AgentFile).where(AgentFile.id == file_id, AgentFile.agent_id == agent_id)
    )


async def delete_file(database: Database, storage: Storage, *, agent_id: str, file_id: str) -> bool:
    """Deletes the record, then the bytes; False when the agent has no such file."""
    async with database.session() as session, session.begin():
        record = await find_file(session, agent_id=agent_id, file_id=file_id)
        if record is None:
            return False
        key = record.storage_key
        await session.delete(record)
    await storage.delete(key)
    return True


async def remove_agent_files(storage: Storage, agent_id: str) -> None:
    """Deletes every stored byte of an agent (its records go with the agent's row)."""
    await storage.delete_prefix(agent_id)
