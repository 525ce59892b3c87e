"""The transparency routes over a real socket, on SQLite and Postgres, and `gateway verify-proof` as a third party
runs it: with the proof a route answered and the published key, nothing else."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.cli import main
from gateway.db.engine import Database
from gateway.keys import load_server_keys
from gateway.settings import Settings
from gateway.transparency.appender import AppendedLeaf
from gateway.transparency.checkpoint import parse_checkpoint
from gateway.transparency.log import TransparencyLog
from gateway.transparency.signer import NoteError, NoteSigner, NoteVerifier
from gateway.transparency.verify import verify_consistency, verify_inclusion
from tests.conftest import GatewayFactory
from tests.serving import GATEWAY, LiveServer, clean_env


def append_events(
    gateway_env: dict[str, str], count: int, *, agent_id: str = "ocs_test"
) -> list[AppendedLeaf]:
    """Appends as the agents' code would, through the log on the gateway's own database."""

    async def run() -> list[AppendedLeaf]:
        database = Database(Settings.from_env(gateway_env, env_file=None).database_url)
        database.open()
        log = TransparencyLog(database, NoteSigner(bytes(32), name="unused"))
        try:
            return [
                await log.append(agent_id=agent_id, kind="test", event={"n": i, "nonce": nonce})
                for i in range(count)
            ]
        finally:
            await database.close()

    nonce = secrets.token_hex(8)  # distinct events each call, on a gateway other tests share
    return asyncio.run(run())


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def test_the_public_key_is_the_data_dirs_key_in_every_form(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    response = httpx.get(f"{gateway.url}/v1/transparency/public-key")

    assert response.status_code == 200
    body = response.json()
    settings = Settings.from_env(gateway_env, env_file=None)
    expected = NoteSigner(load_server_keys(settings).log_signing_key, name="gateway/transparency")
    assert body == {
        "origin": "gateway/transparency",
        "algorithm": "ed25519",
        "public_key": base64.b64encode(expected.public_key).decode(),
        "key_id": expected.key_id.hex(),
        "verifier_key": expected.verifier_key,
    }


def test_the_checkpoint_verifies_with_the_published_key_and_fails_when_changed(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    append_events(gateway_env, 3)
    response = httpx.get(f"{gateway.url}/v1/transparency/checkpoint")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    verifier = NoteVerifier.from_text(
        httpx.get(f"{gateway.url}/v1/transparency/public-key").json()["verifier_key"]
    )
    text, name = verifier.open(response.text)
    checkpoint = parse_checkpoint(text)
    assert name == checkpoint.origin == "gateway/transparency" and checkpoint.tree_size >= 3
    note = response.content
    for position in range(0, len(note), 3):
        changed = bytearray(note)
        changed[position] ^= 0x04
        with pytest.raises((NoteError, ValueError)):
            text, _ = verifier.open(bytes(changed).decode())
            parse_checkpoint(text)


def test_a_proof_is_public_and_verifies(gateway: LiveServer, gateway_env: dict[str, str]) -> None:
    leaves = append_events(gateway_env, 5)
    leaf = leaves[2]
    hash_text = f"sha256:{leaf.leaf_hash.hex()}"

    response = httpx.get(f"{gateway.url}/verify/proof/{hash_text}")

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "hash",
        "verified",
        "leaf_index",
        "tree_size",
        "root_hash",
        "audit_path",
        "checkpoint",
    }
    assert body["hash"] == hash_text and body["verified"] is True
    assert body["leaf_index"] == leaf.index and body["tree_size"] >= leaves[-1].tree_size
    root = bytes.fromhex(body["root_hash"].removeprefix("sha256:"))
    path = [bytes.fromhex(h.removeprefix("sha256:")) for h in body["audit_path"]]
    verify_inclusion(leaf.index, body["tree_size"], leaf.leaf_hash, path, root)
    checkpoint = parse_checkpoint(body["checkpoint"].split("\n\n")[0] + "\n")
    assert (checkpoint.tree_size, checkpoint.root_hash) == (body["tree_size"], root)
    # The colon may come percent-encoded, and the hex in capitals.
    encoded = httpx.get(f"{gateway.url}/verify/proof/sha256%3A{leaf.leaf_hash.hex().upper()}")
    assert encoded.status_code == 200 and encoded.json()["leaf_index"] == leaf.index


def test_unknown_and_malformed_hashes(gateway: LiveServer) -> None:
    unknown = httpx.get(f"{gateway.url}/verify/proof/sha256:{'0' * 64}")
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "leaf_not_found"
    for bad in ("sha256:1234", "0" * 64, "sha256:" + "z" * 64):
        response = httpx.get(f"{gateway.url}/verify/proof/{bad}")
        assert response.status_code == 400 and error_of(response)["param"] == "hash"
    assert httpx.post(f"{gateway.url}/verify/proof/sha256:{'0' * 64}").status_code == 405


def test_consistency_proofs_and_their_bounds(gateway: LiveServer, gateway_env: dict[str, str]) -> None:
    size = append_events(gateway_env, 4)[-1].tree_size
    url = f"{gateway.url}/v1/transparency/consistency"

    response = httpx.get(url, params={"first": 1, "second": size})
    assert response.status_code == 200
    body = response.json()
    assert (body["first"], body["second"]) == (1, size)
    hashes = [bytes.fromhex(body[k].removeprefix("sha256:")) for k in ("first_root_hash", "second_root_hash")]
    path = [bytes.fromhex(h.removeprefix("sha256:")) for h in body["consistency_path"]]
    verify_consistency(1, size, hashes[0], hashes[1], path)
    same = httpx.get(url, params={"first": size, "second": size}).json()
    assert same["consistency_path"] == [] and same["first_root_hash"] == same["second_root_hash"]

    for params in (
        {"first": 0, "second": size},
        {"first": size, "second": size - 1},
        {"first": 1, "second": size + 1000},
        {"first": "one", "second": size},
        {"second": size},
        {"first": "-1", "second": size},
    ):
        bad = httpx.get(url, params=params)
        assert bad.status_code == 400, params
        assert error_of(bad)["type"] == "invalid_request_error"


def test_a_configured_key_and_origin_are_the_ones_published(start_gateway: GatewayFactory) -> None:
    seed = bytes(range(1, 33))
    with start_gateway(
        LOG_SIGNING_KEY=base64.b64encode(seed).decode(), LOG_ORIGIN="logs.example/agents"
    ) as server:
        body = httpx.get(f"{server.url}/v1/transparency/public-key").json()
        note = httpx.get(f"{server.url}/v1/transparency/checkpoint").text

    expected = NoteSigner(seed, name="logs.example/agents")
    assert body["verifier_key"] == expected.verifier_key and body["origin"] == "logs.example/agents"
    assert note.startswith("logs.example/agents\n")
    NoteVerifier.from_text(expected.verifier_key).open(note)


def verify_proof(*args: str, cwd: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`gateway verify-proof ARGS` run in this process (the console script's own `main`), from `cwd`."""
    with contextlib.chdir(cwd):
        status = main(["verify-proof", *args])
    return status, capsys.readouterr().out


def test_verify_proof_holds_offline_and_refuses_a_tampered_proof(
    gateway: LiveServer, gateway_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaf = append_events(gateway_env, 3)[1]
    proof = httpx.get(f"{gateway.url}/verify/proof/sha256:{leaf.leaf_hash.hex()}").json()
    published = httpx.get(f"{gateway.url}/v1/transparency/public-key")
    (tmp_path / "proof.json").write_text(json.dumps(proof))
    (tmp_path / "key.json").write_bytes(published.content)
    verifier_key = published.json()["verifier_key"]

    # As a third party runs it: the console script, with nothing but the proof and the key.
    script = subprocess.run(
        [GATEWAY, "verify-proof", "proof.json", "--public-key", verifier_key],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=clean_env(DATABASE_URL="unused://"),  # needs no settings: a bad one does not matter
        timeout=60,
    )
    assert script.returncode == 0, script.stdout + script.stderr
    assert script.stdout.strip().endswith("VERIFIED") and "NOT VERIFIED" not in script.stdout

    for key in (published.json()["public_key"], "key.json"):
        status, out = verify_proof("proof.json", "--public-key", key, cwd=tmp_path, capsys=capsys)
        assert status == 0 and out.strip().endswith("VERIFIED"), out
    # The agents' proof route nests the same object under `proof`.
    nested = {
        "agent_id": "ocs_test",
        "hash": proof["hash"],
        "proof": {k: proof[k] for k in proof if k != "hash"},
    }
    (tmp_path / "nested.json").write_text(json.dumps(nested))
    assert verify_proof("nested.json", "--public-key", verifier_key, cwd=tmp_path, capsys=capsys)[0] == 0

    last_hex = proof["audit_path"][0][-1]
    tampered_path = [
        proof["audit_path"][0][:-1] + ("1" if last_hex == "0" else "0"),
        *proof["audit_path"][1:],
    ]
    for change in (
        {"audit_path": tampered_path},
        {"leaf_index": proof["leaf_index"] + 1},
        {"tree_size": proof["tree_size"] + 1},
        {"checkpoint": proof["checkpoint"].replace("\n", "\n ", 1)},
    ):
        (tmp_path / "tampered.json").write_text(json.dumps({**proof, **change}))
        status, out = verify_proof("tampered.json", "--public-key", verifier_key, cwd=tmp_path, capsys=capsys)
        assert status == 1 and "NOT VERIFIED" in out, (change, out)
    other_key = NoteSigner(bytes(32), name="gateway/transparency").verifier_key
    assert verify_proof("proof.json", "--public-key", other_key, cwd=tmp_path, capsys=capsys)[0] == 1
    script = subprocess.run(
        [GATEWAY, "verify-proof", "tampered.json", "--public-key", verifier_key],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert script.returncode == 1 and "NOT VERIFIED" in script.stdout

    (tmp_path / "garbage.json").write_text("{not json")
    for args in (
        ("garbage.json", "--public-key", verifier_key),
        ("missing.json", "--public-key", verifier_key),
        ("proof.json", "--public-key", "not a key"),
    ):
        assert verify_proof(*args, cwd=tmp_path, capsys=capsys)[0] == 2
