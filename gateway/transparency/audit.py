"""The offline check of a proof document (`gateway verify-proof`): with nothing but the log's public key, that
the checkpoint is signed by it, that it is the tree the proof is for, and that the leaf is in that tree."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.transparency.checkpoint import CheckpointError, parse_checkpoint
from gateway.transparency.signer import NoteError, NoteVerifier
from gateway.transparency.verify import ProofError, verify_inclusion

HASH_TEXT = re.compile(r"sha256:([0-9a-fA-F]{64})")


class ProofDocumentError(ValueError):
    """The document is not a proof: a field is missing or malformed."""


@dataclass(frozen=True, slots=True)
class ProofDocument:
    leaf_hash: bytes
    leaf_index: int
    tree_size: int
    root_hash: bytes
    audit_path: tuple[bytes, ...]
    checkpoint: str


@dataclass(slots=True)
class Verdict:
    """Each check in the order it ran, and whether it passed; the proof holds only when every one did."""

    checks: list[tuple[bool, str]] = field(default_factory=list)

    def passed(self, line: str) -> None:
        self.checks.append((True, line))

    def failed(self, line: str) -> None:
        self.checks.append((False, line))

    @property
    def holds(self) -> bool:
        return bool(self.checks) and all(ok for ok, _ in self.checks)

    def report(self) -> str:
        lines = [f"{'ok  ' if ok else 'FAIL'}  {line}" for ok, line in self.checks]
        lines.append("VERIFIED" if self.holds else "NOT VERIFIED")
        return "\n".join(lines)


def read_proof_document(data: Any, *, leaf_hash: str | None = None) -> ProofDocument:
    """The proof in a `GET /verify/proof/{hash}` answer, an agent's proof answer (`{hash, proof: {...}}`), or a
    bare `proof` object (then `leaf_hash` must be given). Raises ProofDocumentError."""
    if not isinstance(data, Mapping):
        raise ProofDocumentError("expected a JSON object")
    proof = data.get("proof", data)
    if not isinstance(proof, Mapping):
        raise ProofDocumentError("`proof` is not an object")
    hash_field = leaf_hash or data.get("hash") or data.get("leaf_hash") or proof.get("leaf_hash")
    if hash_field is None:
        raise ProofDocumentError("the document has no leaf hash (`hash`); pass it with --leaf-hash")
    path = proof.get("audit_path")
    if not isinstance(path, list):
        raise ProofDocumentError("`audit_path` is not a list")
    checkpoint = proof.get("checkpoint")
    if not isinstance(checkpoint, str):
        raise ProofDocumentError("`checkpoint` is not a string")
    return ProofDocument(
        leaf_hash=_hash(hash_field, "hash"),
        leaf_index=_count(proof.get("leaf_index"), "leaf_index"),
        tree_size=_count(proof.get("tree_size"), "tree_size"),
        root_hash=_hash(proof.get("root_hash"), "root_hash"),
        audit_path=tuple(_hash(item, "audit_path") for item in path),
        checkpoint=checkpoint,
    )


def read_public_key(text: str) -> NoteVerifier:
    """The key to check with: a verifier key, a base64 public key, or `GET /v1/transparency/public-key`'s JSON.

    Raises NoteError when it is none of these.
    """
    if text.lstrip().startswith("{"):
        try:
            published = json.loads(text)
        except ValueError:
            raise NoteError("the key file is not valid JSON") from None
        key = (
            published.get("verifier_key") or published.get("public_key")
            if isinstance(published, dict)
            else None
        )
        if not isinstance(key, str):
            raise NoteError("the key file has no `verifier_key`")
        text = key
    return NoteVerifier.from_text(text)


def check_proof(document: ProofDocument, verifier: NoteVerifier) -> Verdict:
    """Checks the checkpoint's signature, that it names the proof's tree, and the inclusion."""
    verdict = Verdict()
    try:
        text, signer = verifier.open(document.checkpoint)
        checkpoint = parse_checkpoint(text)
    except (NoteError, CheckpointError) as exc:
        verdict.failed(f"checkpoint signature: {exc}")
        return verdict
    verdict.passed(f"checkpoint signed by {signer} with this key")
    if checkpoint.origin != signer:
        verdict.failed(f"checkpoint origin {checkpoint.origin!r} is not its signer {signer!r}")
    if (checkpoint.tree_size, checkpoint.root_hash) != (document.tree_size, document.root_hash):
        verdict.failed(
            f"checkpoint is for a tree of {checkpoint.tree_size} leaves with root "
            f"sha256:{checkpoint.root_hash.hex()}, not the proof's tree of {document.tree_size} leaves "
            f"with root sha256:{document.root_hash.hex()}"
        )
    else:
        verdict.passed(f"checkpoint is the tree of {checkpoint.tree_size} leaves the proof is for")
    leaf = f"sha256:{document.leaf_hash.hex()}"
    try:
        verify_inclusion(
            document.leaf_index,
            document.tree_size,
            document.leaf_hash,
            document.audit_path,
            document.root_hash,
        )
    except ProofError as exc:
        verdict.failed(f"inclusion of leaf {leaf} at index {document.leaf_index}: {exc}")
    else:
        verdict.passed(
            f"audit path leads from leaf {leaf} at index {document.leaf_index} to the proof's root"
        )
    return verdict


def _hash(value: Any, name: str) -> bytes:
    match = HASH_TEXT.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ProofDocumentError(f"`{name}` holds something other than sha256:<64 hex digits>")
    return bytes.fromhex(match.group(1))


def _count(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProofDocumentError(f"`{name}` is not a whole number")
    return value
