"""An agent's budget over its chat turns (issue 22): reserved before the model is called, settled by the turn's
usage, and a turn that does not fit refused with an error frame, the model not called."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.conftest import GatewayFactory
from tests.fakes.chat_provider import USAGE, FakeChatProvider
from tests.integration.agents_support import User, new_user, turn_frames
from tests.integration.test_budgets import run_cli
from tests.serving import LiveServer

OUTPUT_TOKENS = 100  # BUDGET_DEFAULT_MAX_TOKENS: a turn names no max_tokens
# The first turn reserves 113 tokens ("user" and "hello": 9 bytes, 4 for the framing, 100 for the output) and
# uses 18; the second's history ("hello", "Echo: hello", "again") reserves 150: 18 + 150 is past 150.
CAP = 150


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[FakeChatProvider, LiveServer]]:
    fake = FakeChatProvider()
    with LiveServer(fake.app) as server:
        yield fake, server


@pytest.fixture(scope="module")
def chat_gateway(
    start_gateway: GatewayFactory, provider: tuple[FakeChatProvider, LiveServer]
) -> Iterator[LiveServer]:
    settings = {
        "WORKERS_AI_BASE_URL": f"{provider[1].url}/ai/v1",
        "WORKERS_AI_API_KEY": "workers-ai-platform-secret",
        "BUDGET_DEFAULT_MAX_TOKENS": str(OUTPUT_TOKENS),
    }
    with start_gateway(**settings) as server:
        yield server


def test_an_agents_turns_are_held_to_its_budget(
    chat_gateway: LiveServer, provider: tuple[FakeChatProvider, LiveServer], gateway_env: dict[str, str]
) -> None:
    provider[0].reset()
    user: User = new_user(gateway_env, chat_gateway.url)
    agent = user.running_agent()
    shown = run_cli(
        gateway_env, "users", "limits", "--email", user.email, "--agent", agent["id"], "--tokens", str(CAP)
    )
    assert f"limits of agent:{agent['id']}" in shown

    async def two_turns() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        async with user.chat(agent["id"]) as socket:
            return await turn_frames(socket, "hello"), await turn_frames(socket, "again")

    first, second = asyncio.run(two_turns())
    assert first[-1]["type"] == "stream_end", first
    assert second[-1] == {
        "type": "error",
        "code": "budget_exceeded",
        "message": second[-1]["message"],
    }
    assert "tokens_per_period" in str(second[-1]["message"])
    assert len(provider[0].recorder.requests) == 1  # the second turn never reached the model
    row = next(
        line.split("\t")
        for line in run_cli(gateway_env, "users", "limits", "--email", user.email, "--agent", agent["id"])
        .strip()
        .splitlines()
        if line.startswith("tokens_per_period")
    )
    # kind, limit, period, spent, reserved, remaining: the first turn settled to what it used.
    assert row[1:6] == [str(CAP), "month", str(USAGE["total_tokens"]), "0", str(CAP - USAGE["total_tokens"])]
