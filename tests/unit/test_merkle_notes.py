"""Signed checkpoints (C2SP signed notes with Ed25519), the offline proof check, and the log's settings."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.keys import load_server_keys
from gateway.settings import Settings, SettingsError
from gateway.transparency.audit import ProofDocumentError, check_proof, read_proof_document, read_public_key
from gateway.transparency.checkpoint import Checkpoint, CheckpointError, parse_checkpoint
from gateway.transparency.compact import CompactRange
from gateway.transparency.hashing import leaf_hash
from gateway.transparency.proof import NodeId, inclusion_ranges, range_hash
from gateway.transparency.signer import NoteError, NoteSigner, NoteVerifier

SEED = bytes(range(32))
ORIGIN = "example.com/log"
ROOT = hashlib.sha256(b"a root").digest()


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner(SEED, name=ORIGIN)


def test_a_checkpoint_note_is_the_c2sp_format(signer: NoteSigner) -> None:
    note = signer.sign(Checkpoint(ORIGIN, 12, ROOT).body())

    text, blank, signature_line = note.partition("\n\n")
    assert text + "\n" == f"{ORIGIN}\n12\n{base64.b64encode(ROOT).decode()}\n"
    assert blank == "\n\n"
    dash, name, encoded = signature_line.removesuffix("\n").split(" ")
    assert (dash, name) == ("\u2014", ORIGIN) and signature_line.endswith("\n")
    raw = base64.b64decode(encoded)
    key_id = hashlib.sha256(ORIGIN.encode() + b"\n\x01" + signer.public_key).digest()[:4]
    assert raw[:4] == key_id == signer.key_id
    # Any Ed25519 implementation accepts the signature over the text before the blank line.
    Ed25519PublicKey.from_public_bytes(signer.public_key).verify(raw[4:], (text + "\n").encode())
    encoded_key = base64.b64encode(b"\x01" + signer.public_key).decode()
    assert signer.verifier_key == f"{ORIGIN}+{key_id.hex()}+{encoded_key}"


def test_a_note_opens_with_the_verifier_key_or_the_bare_public_key(signer: NoteSigner) -> None:
    note = signer.sign(Checkpoint(ORIGIN, 3, ROOT).body())
    for key in (signer.verifier_key, base64.b64encode(signer.public_key).decode(), signer.public_key.hex()):
        text, name = NoteVerifier.from_text(key).open(note)
        assert name == ORIGIN
        assert parse_checkpoint(text) == Checkpoint(ORIGIN, 3, ROOT)


def test_another_key_or_name_does_not_open_the_note(signer: NoteSigner) -> None:
    note = signer.sign(Checkpoint(ORIGIN, 3, ROOT).body())
    other = NoteSigner(bytes(32), name=ORIGIN)
    with pytest.raises(NoteError):
        NoteVerifier.from_text(other.verifier_key).open(note)
    with pytest.raises(NoteError):
        NoteVerifier(signer.public_key, name="another.example/log").open(note)


def test_changing_any_byte_of_a_checkpoint_breaks_it(signer: NoteSigner) -> None:
    note = signer.sign(Checkpoint(ORIGIN, 1234, ROOT).body()).encode()
    verifiers = [NoteVerifier.from_text(signer.verifier_key), NoteVerifier(signer.public_key)]
    for position in range(len(note)):
        for change in (0x01, 0x20, 0x80):
            changed = bytearray(note)
            changed[position] ^= change
            for verifier in verifiers:
                with pytest.raises((NoteError, CheckpointError, UnicodeDecodeError)):
                    text, _ = verifier.open(bytes(changed).decode())
                    parse_checkpoint(text)


def test_malformed_checkpoints_are_refused() -> None:
    root = base64.b64encode(ROOT).decode()
    for body in (
        f"{ORIGIN}\n12\n{root}",  # no final newline
        f"{ORIGIN}\n12\n",
        f"{ORIGIN}\n012\n{root}\n",
        f"{ORIGIN}\n-1\n{root}\n",
        f"{ORIGIN}\n12\n{root[:-4]}\n",
        f"with space\n12\n{root}\n",
    ):
        with pytest.raises(CheckpointError):
            parse_checkpoint(body)
    assert parse_checkpoint(f"{ORIGIN}\n12\n{root}\nextension line\n").tree_size == 12


def test_bad_public_keys_are_refused(signer: NoteSigner) -> None:
    name, _, encoded = signer.verifier_key.split("+", 2)
    for text in ("", "not base64!", base64.b64encode(b"short").decode(), f"{name}+00000000+{encoded}"):
        with pytest.raises(NoteError):
            NoteVerifier.from_text(text)
    published = json.dumps({"origin": ORIGIN, "verifier_key": signer.verifier_key})
    assert read_public_key(published).name == ORIGIN


def proof_document(signer: NoteSigner, *, size: int, index: int) -> dict[str, object]:
    """A proof as `GET /verify/proof/{hash}` answers, built from an in-memory tree."""
    hashes = [leaf_hash(f"leaf {i}".encode()) for i in range(size)]
    nodes: dict[NodeId, bytes] = {}
    tree = CompactRange()
    for i, hashed in enumerate(hashes):
        nodes[NodeId(0, i)] = hashed
        nodes.update(tree.append(hashed))
    return {
        "hash": f"sha256:{hashes[index].hex()}",
        "verified": True,
        "leaf_index": index,
        "tree_size": size,
        "root_hash": f"sha256:{tree.root().hex()}",
        "audit_path": [f"sha256:{range_hash(b, e, nodes).hex()}" for b, e in inclusion_ranges(index, size)],
        "checkpoint": signer.sign(Checkpoint(ORIGIN, size, tree.root()).body()),
    }


def test_the_offline_check_accepts_a_good_proof_in_every_shape(signer: NoteSigner) -> None:
    verifier = NoteVerifier.from_text(signer.verifier_key)
    document = proof_document(signer, size=21, index=13)
    nested = {"agent_id": "ocs_1", "hash": document["hash"], "proof": document}
    for shape in (document, nested):
        verdict = check_proof(read_proof_document(shape), verifier)
        assert verdict.holds, verdict.report()
    bare = {k: v for k, v in document.items() if k not in ("hash", "verified")}
    with pytest.raises(ProofDocumentError):
        read_proof_document(bare)
    assert check_proof(read_proof_document(bare, leaf_hash=str(document["hash"])), verifier).holds


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("leaf_index", 12),
        ("tree_size", 22),
        ("root_hash", f"sha256:{'00' * 32}"),
        ("hash", f"sha256:{'11' * 32}"),
    ],
)
def test_the_offline_check_refuses_a_changed_proof(signer: NoteSigner, field: str, value: object) -> None:
    document = {**proof_document(signer, size=21, index=13), field: value}
    verdict = check_proof(read_proof_document(document), NoteVerifier(signer.public_key))
    assert not verdict.holds
    assert "NOT VERIFIED" in verdict.report()


def test_the_offline_check_refuses_a_changed_path_or_a_checkpoint_by_another_key(signer: NoteSigner) -> None:
    document = proof_document(signer, size=21, index=13)
    path = list(document["audit_path"])  # type: ignore[call-overload]
    path[2] = path[2][:-1] + ("0" if path[2][-1] != "0" else "1")
    changed = {**document, "audit_path": path}
    assert not check_proof(read_proof_document(changed), NoteVerifier(signer.public_key)).holds
    impostor = NoteSigner(bytes(32), name=ORIGIN)
    forged = {**document, "checkpoint": impostor.sign(str(document["checkpoint"]).split("\n\n")[0] + "\n")}
    assert not check_proof(read_proof_document(forged), NoteVerifier(signer.public_key)).holds


@pytest.mark.parametrize(
    "document",
    [[], {"hash": "sha256:xyz"}, {"hash": f"sha256:{'ab' * 32}", "leaf_index": -1, "audit_path": []}],
)
def test_unreadable_documents_are_errors_not_verdicts(document: object) -> None:
    with pytest.raises(ProofDocumentError):
        read_proof_document(document)


def test_log_settings_have_defaults_and_name_their_variable(tmp_path: Path) -> None:
    defaults = Settings.from_env({"DATA_DIR": str(tmp_path)}, env_file=None)
    assert defaults.log_origin == "gateway/transparency" and defaults.log_signing_key is None
    configured = Settings.from_env(
        {"LOG_SIGNING_KEY": base64.b64encode(SEED).decode(), "LOG_ORIGIN": ORIGIN}, env_file=None
    )
    assert configured.log_signing_key == SEED and configured.log_origin == ORIGIN
    assert Settings.from_env({"LOG_SIGNING_KEY": SEED.hex()}, env_file=None).log_signing_key == SEED
    for variable, value in (
        ("LOG_SIGNING_KEY", base64.b64encode(bytes(31)).decode()),
        ("LOG_SIGNING_KEY", "not a key"),
        ("LOG_ORIGIN", "has space"),
        ("LOG_ORIGIN", "a+b"),
    ):
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({variable: value}, env_file=None)
        assert caught.value.variable == variable


def test_the_signing_key_is_generated_once_into_the_data_dir(tmp_path: Path) -> None:
    settings = Settings.from_env({"DATA_DIR": str(tmp_path)}, env_file=None)
    first = load_server_keys(settings).log_signing_key
    assert len(first) == 32
    assert load_server_keys(settings).log_signing_key == first
    given = Settings.from_env({"DATA_DIR": str(tmp_path), "LOG_SIGNING_KEY": SEED.hex()}, env_file=None)
    assert load_server_keys(given).log_signing_key == SEED
