"""Proofs checked in the browser: verify.js against the gateway's own Python log code, byte for byte, and tampering.

The module is loaded in Debian's chromium from a page on loopback (Web Crypto needs a secure context), fed proofs
and notes made by gateway.transparency, and must agree with it on every root and signature; any byte changed must
fail at the step it touches.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.transparency.checkpoint import Checkpoint
from gateway.transparency.hashing import EMPTY_ROOT, leaf_hash, node_hash
from gateway.transparency.log import hash_text
from gateway.transparency.proof import inclusion_ranges, split_point
from gateway.transparency.signer import NoteSigner
from tests.serving import LiveServer

STATIC = Path(__file__).parents[2] / "gateway" / "dashboard" / "static"
ORIGIN = "example.test/log"
SEED = bytes(range(32))


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162's Merkle tree hash, written from its definition (section 2.1.1), over leaf hashes."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = split_point(len(leaves))
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def proof_answer(size: int, index: int, signer: NoteSigner) -> dict[str, Any]:
    """A `GET /verify/proof/{hash}` answer for leaf `index` of a tree of `size` leaves, signed by `signer`."""
    leaves = [leaf_hash(f"event {i}".encode()) for i in range(size)]
    root = mth(leaves)
    return {
        "hash": hash_text(leaves[index]),
        "verified": True,
        "leaf_index": index,
        "tree_size": size,
        "root_hash": hash_text(root),
        "audit_path": [hash_text(mth(leaves[b:e])) for b, e in inclusion_ranges(index, size)],
        "checkpoint": signer.sign(Checkpoint(signer.name, size, root).body()),
    }


def public_key(signer: NoteSigner) -> dict[str, str]:
    return {
        "origin": signer.name,
        "algorithm": "ed25519",
        "public_key": base64.b64encode(signer.public_key).decode(),
        "key_id": signer.key_id.hex(),
        "verifier_key": signer.verifier_key,
    }


async def blank(request: Any) -> HTMLResponse:
    return HTMLResponse("<!doctype html><html lang=en><title>verify.js</title><main></main></html>")


@pytest.fixture(scope="module")
def static_server() -> Iterator[LiveServer]:
    app = Starlette(routes=[Route("/", blank), Mount("/dashboard/static", StaticFiles(directory=STATIC))])
    with LiveServer(app) as server:
        yield server


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium")
        yield browser
        browser.close()


@pytest.fixture
def module_page(chromium: Browser, static_server: LiveServer) -> Iterator[Page]:
    page = chromium.new_page()
    page.goto(static_server.url + "/")
    page.evaluate("async () => { window.V = await import('/dashboard/static/verify.js'); }")
    yield page
    page.close()


def verify(page: Page, answer: dict[str, Any], key: dict[str, str], wanted: str) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(
        """async ([answer, key, wanted]) => {
            const {verified, steps} = await V.verifyProof(answer, key, wanted);
            return {verified, steps: steps.map(({id, ok, detail}) => ({id, ok, detail}))};
        }""",
        [answer, key, wanted],
    )
    return result


def failing(result: dict[str, Any]) -> list[str]:
    return [step["id"] for step in result["steps"] if step["ok"] is not True]


def test_hashes_and_roots_agree_with_the_gateway_for_every_leaf_of_trees_up_to_33(module_page: Page) -> None:
    cases = []
    for size in range(1, 34):
        leaves = [leaf_hash(f"event {i}".encode()) for i in range(size)]
        root = mth(leaves)
        for index in range(size):
            path = [mth(leaves[b:e]).hex() for b, e in inclusion_ranges(index, size)]
            cases.append([index, size, leaves[index].hex(), path, root.hex()])
    mismatches = module_page.evaluate(
        """async (cases) => {
            const bad = [];
            for (const [index, size, leaf, path, root] of cases) {
                const got = await V.inclusionSteps(index, size, V.fromHex(leaf), path.map(V.fromHex));
                if (V.toHex(got.root) !== root || got.steps.length !== path.length) bad.push([index, size]);
            }
            return bad;
        }""",
        cases,
    )
    assert len(cases) == 33 * 34 // 2
    assert mismatches == []

    leaf, left, right = b"a leaf", hashlib.sha256(b"l").digest(), hashlib.sha256(b"r").digest()
    hashed = module_page.evaluate(
        """async ([leaf, left, right]) => [
            V.toHex(await V.leafHash(new TextEncoder().encode(leaf))),
            V.toHex(await V.nodeHash(V.fromHex(left), V.fromHex(right))),
        ]""",
        [leaf.decode(), left.hex(), right.hex()],
    )
    assert hashed == [leaf_hash(leaf).hex(), node_hash(left, right).hex()]


def test_a_path_of_the_wrong_length_is_refused(module_page: Page) -> None:
    answer = proof_answer(6, 4, NoteSigner(SEED, name=ORIGIN))
    messages = module_page.evaluate(
        """async (path) => {
            const leaf = new Uint8Array(32);
            const hashes = path.map(V.parseHash);
            const errors = [];
            for (const p of [hashes.slice(1), [...hashes, hashes[0]]]) {
                try { await V.inclusionSteps(4, 6, leaf, p); errors.push(null); }
                catch (e) { errors.push(e.message); }
            }
            try { await V.inclusionSteps(6, 6, leaf, hashes); } catch (e) { errors.push(e.message); }
            return errors;
        }""",
        answer["audit_path"],
    )
    assert messages == [
        "the audit path is too short for index 4 and size 6",
        "the audit path is too long for index 4 and size 6",
        "leaf index 6 is not within a tree of 6 leaves",
    ]


def test_a_signed_proof_verifies_step_by_step(module_page: Page) -> None:
    signer = NoteSigner(SEED, name=ORIGIN)
    answer = proof_answer(11, 6, signer)
    result = verify(module_page, answer, public_key(signer), answer["hash"])
    assert result["verified"] is True, result
    ids = [step["id"] for step in result["steps"]]
    assert ids == [
        "leaf",
        "key",
        *[f"path-{i}" for i in range(len(answer["audit_path"]))],
        "root",
        "signature",
        "tree",
    ]
    assert failing(result) == []


def tampered(answer: dict[str, Any], field: str, position: int = 10) -> dict[str, Any]:
    """The answer with one character of `field` changed (for the audit path: of its second hash)."""

    def flip(text: str) -> str:
        c = text[position]
        other = "0" if c != "0" else "1"
        if not c.isalnum():
            other = c
        return text[:position] + other + text[position + 1 :]

    changed = dict(answer)
    if field == "audit_path":
        changed["audit_path"] = [
            answer["audit_path"][0],
            flip(answer["audit_path"][1]),
            *answer["audit_path"][2:],
        ]
    else:
        changed[field] = flip(answer[field])
    return changed


def signature_changed(note: str) -> str:
    text, _, line = note[:-1].rpartition("\n")
    dash_name, encoded = line.rsplit(" ", 1)
    raw = bytearray(base64.b64decode(encoded))
    raw[-1] ^= 0x01
    return f"{text}\n{dash_name} {base64.b64encode(bytes(raw)).decode()}\n"


def root_line_changed(note: str) -> str:
    lines = note.split("\n")
    raw = bytearray(base64.b64decode(lines[2]))
    raw[0] ^= 0x80
    lines[2] = base64.b64encode(bytes(raw)).decode()
    return "\n".join(lines)


def test_each_tampering_fails_where_it_touches(module_page: Page) -> None:
    signer = NoteSigner(SEED, name=ORIGIN)
    answer = proof_answer(13, 5, signer)
    key = public_key(signer)
    wanted = answer["hash"]

    cases = {
        "an audit path hash": (tampered(answer, "audit_path"), key, ["root"]),
        "the leaf's hash": (tampered(answer, "hash"), key, ["leaf", "root"]),
        "the proof's root_hash": (tampered(answer, "root_hash"), key, ["tree"]),
        "the leaf index": ({**answer, "leaf_index": 4}, key, ["root"]),
        "the signature": (
            {**answer, "checkpoint": signature_changed(answer["checkpoint"])},
            key,
            ["signature"],
        ),
        "the signed root": (
            {**answer, "checkpoint": root_line_changed(answer["checkpoint"])},
            key,
            ["root", "signature", "tree"],
        ),
        "the signed size": (
            {**answer, "checkpoint": answer["checkpoint"].replace("\n13\n", "\n14\n", 1)},
            key,
            ["signature", "tree"],
        ),
        "another log's key": (answer, public_key(NoteSigner(bytes(32), name=ORIGIN)), ["signature"]),
    }
    for name, (changed, published, expected) in cases.items():
        result = verify(module_page, changed, published, wanted)
        assert result["verified"] is False, name
        assert failing(result) == expected, (name, result)

    # A key whose published id does not match its origin and bytes is refused before any signature is read.
    result = verify(module_page, answer, {**key, "key_id": "00000000"}, wanted)
    assert failing(result) == ["key", "signature"]
