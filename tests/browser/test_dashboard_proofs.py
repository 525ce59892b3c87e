"""Proofs checked in the browser: verify.js against the gateway's own Python log code, byte for byte, and tampering.

verify.js, as the gateway serves it, is loaded in Debian's chromium on loopback (Web Crypto needs a secure context),
fed proofs and notes made by gateway.transparency, and must agree with it on every root and signature; any byte
changed must fail at the step it touches. Then the proof view on a real leaf of the gateway's log: verified, and
failing where a proof altered on its way to the page (Playwright's routing) stops holding.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, Route, expect
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from gateway.transparency.checkpoint import Checkpoint
from gateway.transparency.hashing import EMPTY_ROOT, leaf_hash, node_hash
from gateway.transparency.log import hash_text
from gateway.transparency.proof import inclusion_ranges, split_point
from gateway.transparency.signer import NoteSigner
from tests.browser.conftest import People, assert_accessible, screenshot, sign_in
from tests.serving import LiveServer

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


@pytest.fixture
def module_page(page: Page) -> Page:
    """A page of the gateway's dashboard origin with verify.js, as the gateway serves it, loaded as `V`."""
    page.goto("/dashboard")
    page.evaluate("async () => { window.V = await import('/dashboard/static/verify.js'); }")
    return page


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


# ----- the proof view, on a leaf of the gateway's own log -----


@pytest.fixture(scope="module")
def chat_leaves(dashboard_gateway: LiveServer, people: People) -> dict[str, str]:
    """Leaf hashes of Dana's chat (her first message's verdict, the second reply), through the API and the
    WebSocket, on an agent whose provider is the fake OpenAI upstream."""
    login = httpx.post(f"{dashboard_gateway.url}/api/v1/auth/login", json=people.dana.login)
    token = login.json()["access_token"]
    auth = {"authorization": f"Bearer {token}"}
    agent = httpx.post(
        f"{dashboard_gateway.url}/v1/agents",
        json={"agent_name": "Notary", "model": "gpt-4o-mini", "model_provider": "openai"},
        headers=auth,
    ).json()
    httpx.post(f"{dashboard_gateway.url}/v1/agents/{agent['id']}/start", headers=auth).raise_for_status()
    url = dashboard_gateway.url.replace("http://", "ws://", 1) + f"/v1/agents/{agent['id']}/chat"
    turns = []
    with connect(url, subprotocols=[Subprotocol("bearer"), Subprotocol(token)]) as socket:
        for content in ("Please notarise this.", "And this.", "And this too."):  # a log of several levels
            socket.send(json.dumps({"type": "message", "content": content}))
            frames: list[dict[str, Any]] = []
            while not frames or frames[-1]["type"] not in ("stream_end", "error"):
                frames.append(json.loads(socket.recv(timeout=10)))
            assert frames[-1]["type"] == "stream_end", frames
            turns.append(frames)
    return {"verdict": turns[0][0]["leaf_hash"], "reply": turns[1][-1]["leaf_hash"]}


def proof_steps(page: Page) -> dict[str, str]:
    """Each step on the page: its id and its mark (Passed, Failed or Not run, with its symbol)."""
    marks: dict[str, str] = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll("[data-step]")].map(
            (li) => [li.dataset.step, li.querySelector(".proof-mark").textContent]))"""
    )
    return marks


def test_the_proof_view_verifies_a_real_leaf_in_the_browser(
    page: Page, people: People, chat_leaves: dict[str, str], dashboard_gateway: LiveServer
) -> None:
    leaf = chat_leaves["reply"]
    served = httpx.get(f"{dashboard_gateway.url}/verify/proof/{leaf}").json()

    sign_in(page, people.dana.login, f"#/proof/{leaf}")
    expect(page.get_by_role("heading", level=1)).to_have_text("Proof of inclusion")
    verdict = page.get_by_role("status").filter(has_text="Verified")
    expect(verdict).to_contain_text("✓ Verified")
    expect(verdict).to_contain_text(f"leaf {served['leaf_index']} of a tree of {served['tree_size']} leaves")
    steps = proof_steps(page)
    path = [f"path-{i}" for i in range(len(served["audit_path"]))]
    assert list(steps) == ["leaf", "key", *path, "root", "signature", "tree"]
    assert set(steps.values()) == {"✓ Passed"}
    root = page.locator("[data-step=root]")
    expect(root).to_contain_text(served["root_hash"], use_inner_text=True)
    last = page.locator(f"[data-step={path[-1]}]") if path else root
    expect(last).to_contain_text(served["root_hash"])  # the path's last step lands on the signed root
    expect(page.locator("[data-step=signature]")).to_contain_text(served["checkpoint"].split("\n\n")[0])
    assert_accessible(page)
    screenshot(page, "proof-verified")

    # The page's verdict is its own: the gateway's `verified` is turned false on the way and changes nothing.
    def unverified(route: Route) -> None:
        response = route.fetch()
        route.fulfill(response=response, json={**response.json(), "verified": False})

    page.route("**/verify/proof/**", unverified)
    page.reload()
    expect(page.locator("[data-step=root]")).to_contain_text("✓ Passed")
    expect(verdict).to_contain_text("✓ Verified")
    expect(page.get_by_text("The gateway's own answer said verified: false (not used here).")).to_be_visible()


def altered(body: dict[str, Any], field: str) -> dict[str, Any]:
    """The gateway's answer with one hex digit of an audit-path hash, or one byte of the signature, changed."""
    if field == "audit_path":
        first = body["audit_path"][0]
        digit = "0" if first[-1] != "0" else "1"
        return {**body, "audit_path": [first[:-1] + digit, *body["audit_path"][1:]]}
    return {**body, "checkpoint": signature_changed(body["checkpoint"])}


@pytest.mark.parametrize(
    ("field", "failing_step"),
    [("audit_path", "root"), ("checkpoint", "signature")],
)
def test_a_tampered_proof_fails_at_the_step_it_breaks(
    page: Page,
    people: People,
    chat_leaves: dict[str, str],
    field: str,
    failing_step: str,
) -> None:
    leaf = chat_leaves["verdict"]

    def tamper(route: Route) -> None:
        response = route.fetch()
        route.fulfill(response=response, json=altered(response.json(), field))

    page.route("**/verify/proof/**", tamper)
    sign_in(page, people.dana.login, f"#/proof/{leaf}")
    verdict = page.get_by_role("status").filter(has_text="Verified")
    expect(verdict).to_contain_text("✗ Not verified")
    title = page.locator(f"[data-step={failing_step}] strong")
    expect(verdict).to_contain_text(f"Fails at “{title.inner_text()}”")
    steps = proof_steps(page)
    assert {step for step, mark in steps.items() if mark != "✓ Passed"} == {failing_step}, steps
    assert steps[failing_step] == "✗ Failed"
    assert_accessible(page)
    if field == "audit_path":
        screenshot(page, "proof-failing")


def test_an_unknown_or_malformed_hash_is_said_so(page: Page, people: People) -> None:
    sign_in(page, people.dana.login, f"#/proof/sha256:{'ab' * 32}")
    expect(page.get_by_role("status").filter(has_text="Verified")).to_contain_text(
        "The log has no leaf with this hash."
    )
    page.goto("/dashboard#/proof/sha256:not-a-hash")
    expect(page.get_by_role("status").filter(has_text="Verified")).to_contain_text(
        "Not a leaf hash: expected sha256: and 64 hex digits."
    )
