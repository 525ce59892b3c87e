"""Agent chat over real sockets: the `websockets` client, the gateway under uvicorn, a fake provider on loopback.

Frames, their order and streaming; governance in both modes; BYOK; the conversation as context; messages;
proofs checked with the offline verifier; stop, checkpoint and 4409; refusals; disconnects; usage; quotas.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from tests.conftest import GatewayFactory
from tests.fakes import openai_upstream
from tests.fakes.breaking_upstream import BreakingUpstream
from tests.fakes.chat_provider import USAGE, FakeChatProvider
from tests.integration.agents_support import (
    User,
    new_user,
    next_frame,
    send_message,
    turn_frames,
    usage_rows,
)
from tests.serving import GATEWAY, LiveServer

PLATFORM_KEY = "workers-ai-platform-secret"
LOCAL_KEY = "local-llm-platform-secret"
BYOK_KEY = "sk-byok-agent-own-key-0123456789"
CARD = "4111 1111 1111 1111"
MESSAGES_PER_DAY = 8


@pytest.fixture(scope="module")
def provider_server() -> Iterator[tuple[FakeChatProvider, LiveServer]]:
    fake = FakeChatProvider()
    with LiveServer(fake.app) as server:
        yield fake, server


@pytest.fixture
def provider(provider_server: tuple[FakeChatProvider, LiveServer]) -> FakeChatProvider:
    provider_server[0].reset()
    return provider_server[0]


@pytest.fixture(scope="module")
def chat_gateway(
    start_gateway: GatewayFactory, provider_server: tuple[FakeChatProvider, LiveServer]
) -> Iterator[LiveServer]:
    with start_gateway(**chat_settings(provider_server[1].url)) as server:
        yield server


@pytest.fixture(scope="module")
def other_instance(
    start_gateway: GatewayFactory,
    provider_server: tuple[FakeChatProvider, LiveServer],
    chat_gateway: LiveServer,
) -> Iterator[LiveServer]:
    """A second gateway on the same database, as a second instance behind a load balancer would be."""
    with start_gateway(migrate=False, **chat_settings(provider_server[1].url)) as server:
        yield server


def chat_settings(provider_url: str) -> dict[str, str]:
    return {
        "WORKERS_AI_BASE_URL": f"{provider_url}/ai/v1",
        "WORKERS_AI_API_KEY": PLATFORM_KEY,
        "PROVIDER_LOCAL_LLM_BASE_URL": provider_url,
        "PROVIDER_LOCAL_LLM_API_KEY": LOCAL_KEY,
        "PROVIDER_LOCAL_LLM_STREAM_USAGE": "0",
        "GOVERNANCE_BLOCKED_PATTERNS": json.dumps([r"(?i)project\s+nightingale"]),
        "GOVERNANCE_MAX_MESSAGE_CHARS": "2000",
        "QUOTA_TIERS": json.dumps({"free": {"messages_per_day": MESSAGES_PER_DAY}}),
    }


@pytest.fixture(scope="module")
def alice(gateway_env: dict[str, str], chat_gateway: LiveServer) -> User:
    return new_user(gateway_env, chat_gateway.url)


@pytest.fixture(scope="module")
def bob(gateway_env: dict[str, str], chat_gateway: LiveServer) -> User:
    return new_user(gateway_env, chat_gateway.url)


def verify_offline(
    user: User, proof_response: dict[str, Any], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """`gateway verify-proof` on a proof route's answer, with the log's published verifier key."""
    verifier_key = httpx.get(f"{user.base_url}/v1/transparency/public-key").json()["verifier_key"]
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(json.dumps(proof_response))
    return subprocess.run(
        [GATEWAY, "verify-proof", str(proof_file), "--public-key", verifier_key],
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_a_full_session(alice: User, provider: FakeChatProvider, tmp_path: Path) -> None:
    agent = alice.create_agent(model="gated")
    stored = alice.request(
        "POST", f"/v1/agents/{agent['id']}/vault", json={"provider": "workers-ai", "api_key": BYOK_KEY}
    )
    assert stored.status_code == 201, stored.text
    assert alice.request("POST", f"/v1/agents/{agent['id']}/start").json()["state"] == "running"

    async with alice.chat(agent["id"]) as socket:
        assert socket.subprotocol == "bearer"
        await send_message(socket, "Hello there")
        governance = await next_frame(socket)
        start = await next_frame(socket)
        first = await next_frame(socket)
        # The first chunk is here while the provider is still holding back the rest of its answer.
        assert provider.recorder.wait_for("first_chunk_sent", 0) is not None
        assert provider.recorder.wait_for("finished", 0) is None
        provider.release()
        rest = [await next_frame(socket) for _ in range(3)]
        second_turn = await turn_frames(socket, "And again")

    assert governance["type"] == "governance"
    assert (governance["mode"], governance["decision"], governance["findings"]) == (
        "transparent",
        "allow",
        [],
    )
    assert governance["message_id"].startswith("msg_")
    assert governance["leaf_hash"].startswith("sha256:")
    assert start == {"type": "stream_start", "message_id": start["message_id"], "role": "assistant"}
    assert [frame["type"] for frame in [first, *rest]] == ["stream_chunk"] * 3 + ["stream_end"]
    assert "".join(frame["content"] for frame in [first, *rest[:2]]) == "Echo: Hello there"
    assert {frame["message_id"] for frame in [first, *rest]} == {start["message_id"]}
    end = rest[-1]
    assert end["usage"] == USAGE
    assert end["leaf_hash"].startswith("sha256:") and end["leaf_hash"] != governance["leaf_hash"]
    assert [frame["type"] for frame in second_turn] == ["governance", "stream_start"] + [
        "stream_chunk"
    ] * 3 + ["stream_end"], second_turn

    # The provider saw the agent's own key, never the platform's, and the conversation so far.
    first_call, second_call = provider.recorder.requests
    assert first_call.path == "/ai/v1/chat/completions"
    assert first_call.headers["authorization"] == f"Bearer {BYOK_KEY}"
    assert PLATFORM_KEY not in str(first_call.raw_headers) + first_call.body.decode()
    assert first_call.json()["messages"] == [{"role": "user", "content": "Hello there"}]
    assert first_call.json()["stream"] is True and first_call.json()["stream_options"] == {
        "include_usage": True
    }
    assert second_call.json()["messages"] == [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Echo: Hello there"},
        {"role": "user", "content": "And again"},
    ]

    messages = alice.request("GET", f"/v1/agents/{agent['id']}/messages").json()
    assert [(m["role"], m["content"]) for m in messages["data"]] == [
        ("user", "Hello there"),
        ("assistant", "Echo: Hello there"),
        ("user", "And again"),
        ("assistant", "Echo: And again"),
    ]
    assert [m["id"] for m in messages["data"][:2]] == [governance["message_id"], start["message_id"]]
    assert [m["leaf_hash"] for m in messages["data"][:2]] == [governance["leaf_hash"], end["leaf_hash"]]
    assert messages["data"][1]["usage"] == USAGE
    assert messages["has_more"] is False

    for leaf_hash in (governance["leaf_hash"], end["leaf_hash"]):
        proof = alice.request("GET", f"/v1/agents/{agent['id']}/proofs/{leaf_hash}")
        assert proof.status_code == 200, proof.text
        body = proof.json()
        assert body["agent_id"] == agent["id"] and body["hash"] == leaf_hash and body["proof_error"] is None
        assert body["verification_url"] == f"/verify/proof/{leaf_hash}"
        assert set(body["proof"]) == {"leaf_index", "tree_size", "root_hash", "audit_path", "checkpoint"}
        verdict = verify_offline(alice, body, tmp_path)
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr

    stopped = alice.request("POST", f"/v1/agents/{agent['id']}/stop").json()
    checkpoint = stopped["checkpoint"]
    assert checkpoint["message_count"] == 4
    assert checkpoint["last_leaf_hash"] == second_turn[-1]["leaf_hash"]
    assert checkpoint["tree_size"] >= 4

    async with alice.chat(agent["id"]) as socket:
        with pytest.raises(ConnectionClosed) as closed:
            await next_frame(socket)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4409


async def test_a_stopped_agent_ends_an_open_chat_with_4409(alice: User, provider: FakeChatProvider) -> None:
    agent = alice.running_agent()

    async with alice.chat(agent["id"]) as socket:
        await turn_frames(socket, "one")
        alice.request("POST", f"/v1/agents/{agent['id']}/stop")
        await send_message(socket, "two")
        with pytest.raises(ConnectionClosed) as closed:
            await next_frame(socket)

    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4409
    assert len(provider.recorder.requests) == 1


async def test_enforcing_denies_a_card_number_without_calling_the_model(
    alice: User, provider: FakeChatProvider, tmp_path: Path
) -> None:
    agent = alice.running_agent(governance_mode="enforcing")

    async with alice.chat(agent["id"]) as socket:
        denied = await turn_frames(socket, f"my card is {CARD}, exp 12/29")
        allowed = await turn_frames(socket, "what is the weather like?")

    assert len(denied) == 1
    verdict = denied[0]
    assert (verdict["type"], verdict["mode"], verdict["decision"]) == ("governance", "enforcing", "deny")
    assert [finding["rule"] for finding in verdict["findings"]] == ["card_number"]
    assert allowed[0]["decision"] == "allow" and allowed[-1]["type"] == "stream_end"
    # The model was called once, for the allowed message, and never saw the denied one.
    assert len(provider.recorder.requests) == 1
    assert provider.recorder.last.json()["messages"] == [
        {"role": "user", "content": "what is the weather like?"}
    ]
    proof = alice.request("GET", f"/v1/agents/{agent['id']}/proofs/{verdict['leaf_hash']}")
    assert proof.status_code == 200
    assert verify_offline(alice, proof.json(), tmp_path).returncode == 0


async def test_transparent_flags_a_card_number_and_calls_the_model(
    alice: User, provider: FakeChatProvider, tmp_path: Path
) -> None:
    agent = alice.running_agent(governance_mode="transparent")

    async with alice.chat(agent["id"]) as socket:
        frames = await turn_frames(socket, f"my card is {CARD}")

    verdict = frames[0]
    assert (verdict["mode"], verdict["decision"]) == ("transparent", "flag")
    assert [finding["rule"] for finding in verdict["findings"]] == ["card_number"]
    assert CARD not in json.dumps(verdict)
    assert frames[-1]["type"] == "stream_end"
    assert len(provider.recorder.requests) == 1
    proof = alice.request("GET", f"/v1/agents/{agent['id']}/proofs/{verdict['leaf_hash']}")
    assert verify_offline(alice, proof.json(), tmp_path).returncode == 0


@pytest.mark.parametrize(
    ("content", "rule"),
    [
        ("use sk-proj-abcdefghijklmnopqrstuvwxyz0123 for it", "secret"),
        ("write to jane.doe@example.org", "email_address"),
        ("tell me about Project  Nightingale", "blocked_pattern"),
        ("x" * 2001, "max_length"),
    ],
)
async def test_each_rule_shows_in_the_findings(
    alice: User, provider: FakeChatProvider, content: str, rule: str
) -> None:
    agent = alice.running_agent(governance_mode="enforcing")

    async with alice.chat(agent["id"]) as socket:
        frames = await turn_frames(socket, content)

    assert frames[0]["decision"] == "deny"
    assert rule in [finding["rule"] for finding in frames[0]["findings"]]
    assert provider.recorder.requests == []


async def test_bad_frames_get_error_frames_and_the_chat_goes_on(
    alice: User, provider: FakeChatProvider
) -> None:
    agent = alice.running_agent()
    bad = {
        "not json": "invalid_json",
        "[1, 2]": "invalid_frame",
        '{"type": "hello"}': "unknown_type",
        '{"type": "message"}': "invalid_frame",
        '{"type": "message", "content": 5}': "invalid_frame",
        '{"type": "message", "content": "   "}': "empty_content",
        json.dumps({"type": "message", "content": "x" * (256 * 1024 + 1)}): "frame_too_large",
    }

    async with alice.chat(agent["id"]) as socket:
        codes = []
        for frame in bad:
            await socket.send(frame)
            codes.append(await next_frame(socket))
        await socket.send(b'{"type": "message", "content": "binary"}')
        binary = await next_frame(socket)
        good = await turn_frames(socket, "still there?")

    assert [(frame["type"], frame["code"]) for frame in codes] == [("error", code) for code in bad.values()]
    assert binary["code"] == "invalid_frame"
    assert good[-1]["type"] == "stream_end"


async def test_the_session_cookie_is_a_credential_from_the_gateways_own_origin(
    alice: User, provider: FakeChatProvider
) -> None:
    agent = alice.running_agent()
    url = f"{alice.ws_url}/v1/agents/{agent['id']}/chat"
    cookie = {"Cookie": f"gw_session={alice.access_token}"}

    async with connect(url, additional_headers=cookie, origin=Origin(alice.base_url)) as socket:
        frames = await turn_frames(socket, "hi")
    # The page served over TLS by a proxy in front that forwards plain HTTP (and WebSocket) to the gateway.
    behind_tls = Origin(alice.base_url.replace("http://", "https://", 1))
    async with connect(url, additional_headers=cookie, origin=behind_tls) as socket_behind_tls:
        frames_behind_tls = await turn_frames(socket_behind_tls, "hi")
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, additional_headers=cookie, origin=Origin("https://evil.example")):
            pass

    assert socket.subprotocol is None
    assert frames[-1]["type"] == frames_behind_tls[-1]["type"] == "stream_end"
    assert refused.value.response.status_code == 403


async def test_an_authorization_header_is_a_credential_and_a_bad_one_is_refused(
    alice: User, provider: FakeChatProvider
) -> None:
    agent = alice.running_agent()
    url = f"{alice.ws_url}/v1/agents/{agent['id']}/chat"

    async with connect(
        url, additional_headers=alice.auth, origin=Origin("https://elsewhere.example")
    ) as socket:
        frames = await turn_frames(socket, "by header")
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, additional_headers={"Authorization": f"Basic {alice.access_token}"}):
            pass

    # Not a cookie: a page elsewhere cannot have made the browser send it, so the Origin does not matter.
    assert socket.subprotocol is None and frames[-1]["type"] == "stream_end"
    assert refused.value.response.status_code == 401


async def test_refusals_before_the_handshake(alice: User, bob: User) -> None:
    agent = alice.running_agent()
    other = alice.running_agent()
    url = f"{alice.ws_url}/v1/agents/{agent['id']}/chat"
    chat_only = alice.api_token(["chat"])
    files_only_key = alice.agent_key(agent["id"], ["files"])
    other_key = alice.agent_key(other["id"])

    async def status_of(**options: Any) -> int:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, **options):
                pass
        return refused.value.response.status_code

    assert await status_of() == 401
    assert await status_of(subprotocols=["bearer"]) == 401
    assert await status_of(subprotocols=["bearer", "gw_made_up_token_value"]) == 401
    assert await status_of(subprotocols=["bearer", bob.access_token]) == 404
    assert await status_of(subprotocols=["bearer", chat_only]) == 403
    assert await status_of(subprotocols=["bearer", other_key]) == 403
    assert await status_of(subprotocols=["bearer", files_only_key]) == 403
    async with alice.chat(agent["id"], token=alice.agent_key(agent["id"])) as socket:
        assert (await turn_frames(socket, "by key"))[-1]["type"] == "stream_end"
    async with alice.chat(agent["id"], token=alice.api_token(["agents"])) as socket:
        assert (await turn_frames(socket, "by token"))[-1]["type"] == "stream_end"


async def test_refusals_come_with_the_error_envelope_and_the_request_id(alice: User) -> None:
    agent = alice.running_agent()
    url = f"{alice.ws_url}/v1/agents/{agent['id']}/chat"

    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, additional_headers={"X-Request-ID": "refused-1"}):
            pass

    response = refused.value.response
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["x-request-id"] == "refused-1"
    assert json.loads(response.body or b"")["error"]["code"] == "missing_credential"


async def test_a_revoked_token_is_refused_at_the_next_handshake(
    alice: User, provider: FakeChatProvider
) -> None:
    agent = alice.running_agent()
    created = alice.request("POST", "/v1/api-tokens", json={"name": "revoked", "scopes": ["agents"]}).json()

    async with alice.chat(agent["id"], token=created["token"]) as socket:
        assert (await turn_frames(socket, "before"))[-1]["type"] == "stream_end"
    assert alice.request("DELETE", f"/v1/api-tokens/{created['id']}").status_code in (200, 204)
    with pytest.raises(InvalidStatus) as refused:
        async with alice.chat(agent["id"], token=created["token"]):
            pass

    assert refused.value.response.status_code == 401


async def test_closing_the_socket_closes_the_upstream_and_records_the_turn(
    alice: User, provider: FakeChatProvider
) -> None:
    agent = alice.running_agent(model="endless")

    async with alice.chat(agent["id"]) as socket:
        await send_message(socket, "go on forever")
        assert (await next_frame(socket))["type"] == "governance"
        assert (await next_frame(socket))["type"] == "stream_start"
        assert (await next_frame(socket))["type"] == "stream_chunk"
        closed_at = time.monotonic()

    disconnected = await asyncio.to_thread(provider.recorder.wait_for, "disconnected", 10)
    assert disconnected is not None and disconnected - closed_at < 5  # at once: not the 30 s read timeout
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        by_type = alice.request("GET", "/v1/usage?hours=1").json()["by_type"]
        if any(row["type"] == "agent_chat" and row["errors"] >= 1 for row in by_type):
            break
        await asyncio.sleep(0.2)
    else:
        pytest.fail(f"no agent_chat usage recorded: {by_type}")


async def test_turns_are_recorded_in_usage_analytics(
    alice: User, bob: User, provider: FakeChatProvider
) -> None:
    agent = bob.running_agent(model="counted")

    async with bob.chat(agent["id"]) as socket:
        await turn_frames(socket, "count me")

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = [
            row
            for row in bob.request("GET", "/v1/usage?hours=1").json()["by_type"]
            if row["type"] == "agent_chat"
        ]
        if rows and rows[0]["total_tokens"] >= USAGE["total_tokens"]:
            break
        await asyncio.sleep(0.2)
    else:
        pytest.fail("the turn was not recorded")
    models = [row["model"] for row in bob.request("GET", "/v1/usage?hours=1").json()["top_models"]]
    assert "counted" in models


async def test_the_clients_request_id_reaches_the_provider_and_the_usage_rows(
    alice: User, provider: FakeChatProvider, gateway_env: dict[str, str]
) -> None:
    agent = alice.running_agent(model="traced")
    request_id = f"chat-{uuid.uuid4().hex}"

    async with alice.chat(agent["id"], headers={"X-Request-ID": request_id}) as socket:
        echoed = socket.response.headers["x-request-id"]
        turns = [await turn_frames(socket, content) for content in ("one", "two")]
    rows = await usage_rows(gateway_env, request_id, count=2)

    assert echoed == request_id
    assert [frames[-1]["type"] for frames in turns] == ["stream_end", "stream_end"]
    # Every turn of the connection carries its id: to the provider, and in its usage row.
    assert [call.headers["x-request-id"] for call in provider.recorder.requests] == [request_id] * 2
    assert [(row.request_type, row.method, row.status, row.error) for row in rows] == [
        ("agent_chat", "WS", 200, None)
    ] * 2
    assert {(row.agent_id, row.model, row.provider, row.total_tokens) for row in rows} == {
        (agent["id"], "traced", "workers-ai", USAGE["total_tokens"])
    }


async def test_a_connection_without_a_sane_request_id_gets_one_of_its_own(
    alice: User, provider: FakeChatProvider, gateway_env: dict[str, str]
) -> None:
    agent = alice.running_agent()

    async with alice.chat(agent["id"], headers={"X-Request-ID": "not a sane id!"}) as socket:
        request_id = socket.response.headers["x-request-id"]
        await turn_frames(socket, "hello")
    rows = await usage_rows(gateway_env, request_id)

    assert request_id != "not a sane id!"
    assert provider.recorder.last.headers["x-request-id"] == request_id
    assert [(row.request_type, row.status) for row in rows] == [("agent_chat", 200)]


async def test_a_failed_provider_call_is_recorded_with_its_error_code(
    alice: User, provider: FakeChatProvider, gateway_env: dict[str, str]
) -> None:
    agent = alice.running_agent(model="broken")
    request_id = f"chat-{uuid.uuid4().hex}"

    async with alice.chat(agent["id"], headers={"X-Request-ID": request_id}) as socket:
        frames = await turn_frames(socket, "break")
    [row] = await usage_rows(gateway_env, request_id)

    assert (frames[-1]["type"], frames[-1]["code"]) == ("error", "upstream_error")
    assert (row.status, row.is_error, row.error, row.total_tokens) == (500, True, "upstream_error", 0)


def test_a_reply_that_breaks_off_is_recorded_as_upstream_incomplete_with_the_tokens_seen(
    start_gateway: GatewayFactory, gateway_env: dict[str, str]
) -> None:
    request_id = f"chat-{uuid.uuid4().hex}"
    with (
        BreakingUpstream() as provider,
        start_gateway(
            WORKERS_AI_BASE_URL=f"{provider.url}/ai/v1", WORKERS_AI_API_KEY="k", UPSTREAM_READ_TIMEOUT="5"
        ) as gateway,
    ):
        user = new_user(gateway_env, gateway.url)
        agent = user.running_agent(model="chunked-rst")

        async def turn() -> tuple[list[dict[str, Any]], list[Any]]:
            async with user.chat(agent["id"], headers={"X-Request-ID": request_id}) as chat:
                frames = await turn_frames(chat, "hello?")
            return frames, await usage_rows(gateway_env, request_id)

        frames, rows = asyncio.run(turn())

    assert (frames[-1]["type"], frames[-1]["code"]) == ("error", "upstream_incomplete")
    assert [(row.status, row.error) for row in rows] == [(502, "upstream_incomplete")]
    assert rows[0].total_tokens == openai_upstream.USAGE["total_tokens"]


async def test_one_turn_at_a_time_per_agent(alice: User, provider: FakeChatProvider) -> None:
    agent = alice.running_agent(model="gated")

    async with alice.chat(agent["id"]) as socket, alice.chat(agent["id"]) as second:
        await send_message(socket, "first")
        assert (await next_frame(socket))["type"] == "governance"
        assert (await next_frame(socket))["type"] == "stream_start"
        assert (await next_frame(socket))["type"] == "stream_chunk"
        await send_message(socket, "too soon")
        busy = await next_frame(socket)
        await send_message(second, "from elsewhere")
        busy_elsewhere = await next_frame(second)
        provider.release()
        rest = [await next_frame(socket) for _ in range(3)]

    assert busy["code"] == busy_elsewhere["code"] == "turn_in_progress"
    assert rest[-1]["type"] == "stream_end"
    assert len(provider.recorder.requests) == 1


async def test_one_turn_at_a_time_across_instances(
    alice: User, other_instance: LiveServer, provider: FakeChatProvider
) -> None:
    agent = alice.running_agent(model="gated")
    elsewhere = dataclasses.replace(alice, base_url=other_instance.url)

    async with alice.chat(agent["id"]) as socket, elsewhere.chat(agent["id"]) as other:
        await send_message(socket, "first")
        assert [(await next_frame(socket))["type"] for _ in range(3)] == [
            "governance",
            "stream_start",
            "stream_chunk",
        ]
        await send_message(other, "from the other instance")
        busy = await next_frame(other)
        provider.release()
        rest = [await next_frame(socket) for _ in range(3)]
        after = await turn_frames(other, "my turn now")

    assert busy["code"] == "turn_in_progress"
    assert rest[-1]["type"] == "stream_end"
    assert after[-1]["type"] == "stream_end"  # the first turn's claim was released when it ended
    assert len(provider.recorder.requests) == 2


async def test_a_provider_error_is_an_error_frame_and_the_chat_goes_on(
    alice: User, provider: FakeChatProvider
) -> None:
    agent = alice.running_agent(model="broken")

    async with alice.chat(agent["id"]) as socket:
        failed = await turn_frames(socket, "break")
        alice.request("PATCH", f"/v1/agents/{agent['id']}", json={"model": "fine"})
        recovered = await turn_frames(socket, "again")

    assert failed[0]["type"] == "governance"
    assert (failed[-1]["type"], failed[-1]["code"]) == ("error", "upstream_error")
    assert recovered[-1]["type"] == "stream_end"
    messages = alice.request("GET", f"/v1/agents/{agent['id']}/messages").json()["data"]
    assert [m["role"] for m in messages] == ["user", "user", "assistant"]


async def test_an_error_mid_stream_ends_the_turn_and_stores_no_reply(
    alice: User, provider: FakeChatProvider
) -> None:
    agent = alice.running_agent(model="fails-midway")

    async with alice.chat(agent["id"]) as socket:
        frames = await turn_frames(socket, "start then fail")

    assert [frame["type"] for frame in frames] == ["governance", "stream_start", "stream_chunk", "error"]
    assert frames[-1]["code"] == "upstream_error"
    assert frames[-1]["message_id"] == frames[1]["message_id"]
    messages = alice.request("GET", f"/v1/agents/{agent['id']}/messages").json()["data"]
    assert [m["role"] for m in messages] == ["user"]


async def test_a_configured_compatible_provider(alice: User, provider: FakeChatProvider) -> None:
    agent = alice.running_agent(model_provider="local-llm", model="llama")

    async with alice.chat(agent["id"]) as socket:
        frames = await turn_frames(socket, "hello local")

    call = provider.recorder.last
    assert call.path == "/v1/chat/completions"
    assert call.headers["authorization"] == f"Bearer {LOCAL_KEY}"
    assert "stream_options" not in call.json()
    assert frames[-1]["usage"] == USAGE  # reported unasked, as Mistral does


async def test_a_plain_json_answer_is_one_chunk(alice: User, provider: FakeChatProvider) -> None:
    agent = alice.running_agent(model="json")

    async with alice.chat(agent["id"]) as socket:
        frames = await turn_frames(socket, "no stream")

    chunks = [frame["content"] for frame in frames if frame["type"] == "stream_chunk"]
    assert chunks == ["Echo: no stream"]
    assert frames[-1]["usage"] == USAGE


async def test_a_reply_holding_a_nul_is_streamed_and_stored_with_it_replaced(
    alice: User, provider: FakeChatProvider
) -> None:
    """A provider's text is not the client's to be refused: what Postgres cannot store (NUL) is replaced, the same
    in the stream, the stored message and its proof, on both databases."""
    agent = alice.running_agent(model="nul")

    async with alice.chat(agent["id"]) as socket:
        frames = await turn_frames(socket, "zero")

    assert frames[-1]["type"] == "stream_end", frames
    streamed = "".join(frame["content"] for frame in frames if frame["type"] == "stream_chunk")
    assert streamed == "Echo\ufffd: zero"
    messages = alice.request("GET", f"/v1/agents/{agent['id']}/messages").json()["data"]
    assert [message["content"] for message in messages if message["role"] == "assistant"] == [streamed]


async def test_an_unconfigured_provider_is_an_error_frame(
    gateway_env: dict[str, str], gateway: LiveServer
) -> None:
    user = new_user_in_thread(gateway_env, gateway.url)
    agent = user.running_agent()  # workers-ai, which the default gateway does not configure

    async with user.chat(agent["id"]) as socket:
        frames = await turn_frames(socket, "anyone?")

    assert (frames[-1]["type"], frames[-1]["code"]) == ("error", "provider_not_configured")


def new_user_in_thread(gateway_env: dict[str, str], base_url: str) -> User:
    """`new_user` from inside a running event loop."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(new_user, gateway_env, base_url).result()


async def test_messages_page_backwards(alice: User, provider: FakeChatProvider) -> None:
    agent = alice.running_agent()
    async with alice.chat(agent["id"]) as socket:
        for content in ("one", "two", "three"):
            await turn_frames(socket, content)
    path = f"/v1/agents/{agent['id']}/messages"

    latest = alice.request("GET", f"{path}?limit=2").json()
    older = alice.request("GET", f"{path}?limit=3&before={latest['data'][0]['id']}").json()

    assert [m["content"] for m in latest["data"]] == ["three", "Echo: three"]
    assert latest["has_more"] is True
    assert [m["content"] for m in older["data"]] == ["Echo: one", "two", "Echo: two"]
    assert older["has_more"] is True
    assert alice.request("GET", f"/v1/agents/{agent['id']}").json()["message_count"] == 6


async def test_a_cleared_session_is_no_longer_context(alice: User, provider: FakeChatProvider) -> None:
    agent = alice.running_agent()
    async with alice.chat(agent["id"]) as socket:
        await turn_frames(socket, "forget me")
        assert alice.request("DELETE", f"/v1/agents/{agent['id']}/messages").status_code == 204
        await turn_frames(socket, "fresh start")

    assert provider.recorder.last.json()["messages"] == [{"role": "user", "content": "fresh start"}]
    messages = alice.request("GET", f"/v1/agents/{agent['id']}/messages").json()["data"]
    assert [m["content"] for m in messages] == ["fresh start", "Echo: fresh start"]


async def test_proofs_of_other_agents_and_unknown_leaves(
    alice: User, bob: User, provider: FakeChatProvider
) -> None:
    mine, theirs = alice.running_agent(), alice.running_agent()
    async with alice.chat(theirs["id"]) as socket:
        leaf = (await turn_frames(socket, "mine alone"))[-1]["leaf_hash"]

    assert alice.request("GET", f"/v1/agents/{mine['id']}/proofs/{leaf}").status_code == 403
    assert bob.request("GET", f"/v1/agents/{theirs['id']}/proofs/{leaf}").status_code == 404
    assert alice.request("GET", f"/v1/agents/{mine['id']}/proofs/sha256:{'0' * 64}").status_code == 404
    assert alice.request("GET", f"/v1/agents/{mine['id']}/proofs/nonsense").status_code == 400
    key = alice.agent_key(theirs["id"])
    assert alice.request("GET", f"/v1/agents/{theirs['id']}/proofs/{leaf}", token=key).status_code == 200


async def test_an_exhausted_quota_is_an_error_frame(alice: User, provider: FakeChatProvider) -> None:
    agent = alice.running_agent()

    async with alice.chat(agent["id"]) as socket:
        for index in range(MESSAGES_PER_DAY):
            assert (await turn_frames(socket, f"message {index}"))[-1]["type"] == "stream_end"
        refused = await turn_frames(socket, "one too many")

    assert [(frame["type"], frame["code"]) for frame in refused] == [("error", "quota_exceeded")]
    assert len(provider.recorder.requests) == MESSAGES_PER_DAY
