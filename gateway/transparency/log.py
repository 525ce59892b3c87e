"""The transparency log service: append events as leaves, prove their inclusion and the tree's consistency, and
sign tree heads. The one entry point for the rest of the gateway; the arithmetic lives in the pure modules."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.engine import Database
from gateway.errors import InvalidRequestError
from gateway.transparency import store
from gateway.transparency.appender import AppendedLeaf, Appender
from gateway.transparency.checkpoint import Checkpoint
from gateway.transparency.hashing import leaf_hash
from gateway.transparency.proof import NodeId, consistency_ranges, inclusion_ranges, nodes_needed, range_hash
from gateway.transparency.signer import NoteSigner
from gateway.transparency.verify import ProofError, verify_inclusion

__all__ = [
    "AppendedLeaf",
    "ConsistencyProof",
    "LeafProof",
    "SignedCheckpoint",
    "TransparencyLog",
    "canonical_json",
    "hash_text",
    "parse_hash_text",
]

HASH_TEXT = re.compile(r"sha256:([0-9a-f]{64})")


def hash_text(h: bytes) -> str:
    """A hash as the API writes it: `sha256:` and 64 lowercase hex digits."""
    return f"sha256:{h.hex()}"


def parse_hash_text(s: str, *, param: str = "hash") -> bytes:
    """The 32 bytes of a `sha256:<hex>` hash (upper-case hex accepted); raises `InvalidRequestError` (400)."""
    match = HASH_TEXT.fullmatch(s.strip().lower())
    if match is None:
        raise InvalidRequestError(
            "Expected a hash as sha256: and 64 hex digits.", code="invalid_hash", param=param
        )
    return bytes.fromhex(match.group(1))


def canonical_json(event: Mapping[str, Any]) -> bytes:
    """The leaf bytes of an event: JSON with sorted keys and no spaces, in UTF-8."""
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class SignedCheckpoint:
    """A signed tree head: `text` is the C2SP checkpoint note."""

    tree_size: int
    root_hash: bytes
    text: str


@dataclass(frozen=True)
class LeafProof:
    """A leaf's RFC 9162 inclusion proof against a signed tree head."""

    leaf_hash: bytes
    leaf_index: int
    agent_id: str | None
    kind: str
    tree_size: int
    root_hash: bytes
    audit_path: tuple[bytes, ...]
    checkpoint: SignedCheckpoint

    def as_json(self) -> dict[str, Any]:
        """The API's `proof` object."""
        return {
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "root_hash": hash_text(self.root_hash),
            "audit_path": [hash_text(h) for h in self.audit_path],
            "checkpoint": self.checkpoint.text,
        }

    def is_verified(self) -> bool:
        """Whether the audit path leads from the leaf to the signed root."""
        try:
            verify_inclusion(self.leaf_index, self.tree_size, self.leaf_hash, self.audit_path, self.root_hash)
        except ProofError:
            return False
        return True


@dataclass(frozen=True)
class ConsistencyProof:
    """An RFC 9162 consistency proof between two sizes of the tree."""

    first: int
    second: int
    first_root_hash: bytes
    second_root_hash: bytes
    path: tuple[bytes, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "second": self.second,
            "first_root_hash": hash_text(self.first_root_hash),
            "second_root_hash": hash_text(self.second_root_hash),
            "consistency_path": [hash_text(h) for h in self.path],
        }


class TransparencyLog:
    """The gateway's log, on its database, signing with one Ed25519 key under one origin."""

    def __init__(self, database: Database, signer: NoteSigner) -> None:
        self.database = database
        self.signer = signer
        self._appender = Appender(database)
        self._latest: SignedCheckpoint | None = None

    @property
    def origin(self) -> str:
        return self.signer.name

    async def append(self, *, agent_id: str | None, kind: str, event: Mapping[str, Any]) -> AppendedLeaf:
        """Appends the event's canonical JSON as a leaf; returns once it is committed (in a transaction of the
        log's own, shared with the appends that arrived at the same moment)."""
        content = canonical_json(event)
        return await self._appender.append(leaf_hash(content), agent_id=agent_id, kind=kind, content=content)

    async def proof_for(self, leaf_hash: bytes) -> LeafProof | None:
        """The inclusion proof of the (first) leaf with this hash against the latest tree, or None if unknown."""
        async with self.database.engine.connect() as connection:
            found = await store.find_leaf(connection, leaf_hash)
            if found is None:
                return None
            leaf, head = found
            ranges = inclusion_ranges(leaf.leaf_index, head.tree_size)
            hashes = await self._hashes(connection, nodes_needed(ranges), head)
        return LeafProof(
            leaf_hash=leaf.leaf_hash,
            leaf_index=leaf.leaf_index,
            agent_id=leaf.agent_id,
            kind=leaf.kind,
            tree_size=head.tree_size,
            root_hash=head.root_hash,
            audit_path=tuple(range_hash(begin, end, hashes) for begin, end in ranges),
            checkpoint=self._signed(head),
        )

    async def checkpoint(self) -> SignedCheckpoint:
        """The latest tree head, signed."""
        async with self.database.engine.connect() as connection:
            head = await store.read_tree_head(connection)
        return self._signed(head)

    async def consistency(self, first: int, second: int) -> ConsistencyProof:
        """The proof that the tree of `second` leaves extends that of `first`.

        Raises InvalidRequestError (400) unless 1 <= first <= second <= the current size.
        """
        async with self.database.engine.connect() as connection:
            head = await store.read_tree_head(connection)
            if not 1 <= first <= second <= head.tree_size:
                raise InvalidRequestError(
                    f"Expected 1 <= first <= second <= {head.tree_size}, the log's size.",
                    code="invalid_range",
                    param="first" if not 1 <= first <= second else "second",
                )
            ranges = consistency_ranges(first, second)
            hashes = await self._hashes(connection, nodes_needed([*ranges, (0, first), (0, second)]), head)
        return ConsistencyProof(
            first=first,
            second=second,
            first_root_hash=range_hash(0, first, hashes),
            second_root_hash=range_hash(0, second, hashes),
            path=tuple(range_hash(begin, end, hashes) for begin, end in ranges),
        )

    async def erase_content(self, *, agent_id: str) -> int:
        """Erases the stored content of an agent's leaves; their hashes stay in the tree, provable."""
        async with self.database.engine.begin() as connection:
            return await store.erase_content(connection, agent_id=agent_id)

    def public_key(self) -> dict[str, str]:
        """The API's description of the signing key."""
        return {
            "origin": self.origin,
            "algorithm": "ed25519",
            "public_key": base64.b64encode(self.signer.public_key).decode(),
            "key_id": self.signer.key_id.hex(),
            "verifier_key": self.signer.verifier_key,
        }

    @staticmethod
    async def _hashes(
        connection: AsyncConnection, needed: set[NodeId], head: store.TreeHead
    ) -> dict[NodeId, bytes]:
        """The hashes of `needed`: the latest tree's peaks from its head, the others from the nodes table."""
        known = {node: head.peaks[node] for node in needed if node in head.peaks}
        return known | await store.read_hashes(connection, needed - known.keys())

    def _signed(self, head: store.TreeHead) -> SignedCheckpoint:
        latest = self._latest
        if latest is None or (latest.tree_size, latest.root_hash) != (head.tree_size, head.root_hash):
            note = self.signer.sign(Checkpoint(self.origin, head.tree_size, head.root_hash).body())
            latest = self._latest = SignedCheckpoint(head.tree_size, head.root_hash, note)
        return latest
