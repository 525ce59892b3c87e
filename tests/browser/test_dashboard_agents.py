"""The agents pages in Debian's chromium: create, start and stop; the chat streamed over the WebSocket (seen in the
page before the fake provider has finished); the message's proof verified in the page; vault, files and quota.

The gateway here is one of this module's, in front of a fake OpenAI-compatible provider whose `gated` model sends
its first chunk, then holds the rest until the test releases it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from playwright.sync_api import FilePayload, Page, expect

from gateway.settings import Settings
from tests.browser.conftest import PASSWORD, Person, assert_accessible, screenshot, sign_in
from tests.conftest import GatewayFactory, add_user
from tests.fakes.chat_provider import FakeChatProvider
from tests.serving import LiveServer

BYOK_KEY = "sk-dashboard-byok-0123456789abcdef"
FILE_BYTES = 3 * 1024 * 1024  # large enough for the upload to report its progress along the way


@pytest.fixture(scope="module")
def chat_provider() -> FakeChatProvider:
    return FakeChatProvider()


@pytest.fixture
def provider(chat_provider: FakeChatProvider) -> Iterator[FakeChatProvider]:
    chat_provider.reset()
    yield chat_provider
    chat_provider.release()  # a test that failed midway leaves no stream held


@pytest.fixture(scope="module")
def dashboard_gateway(start_gateway: GatewayFactory, chat_provider: FakeChatProvider) -> Iterator[LiveServer]:
    """The dashboard's gateway (conftest's `page` opens it), whose workers-ai provider is the fake, on loopback."""
    with (
        LiveServer(chat_provider.app) as upstream,
        start_gateway(
            WORKERS_AI_BASE_URL=f"{upstream.url}/ai/v1",
            WORKERS_AI_API_KEY="platform-key",
            GOVERNANCE_BLOCKED_PATTERNS=json.dumps([r"(?i)project\s+nightingale"]),
        ) as server,
    ):
        yield server


@pytest.fixture
def person(gateway_env: dict[str, str], dashboard_gateway: LiveServer) -> Person:
    """A fresh user (no agents yet), made in a thread: Playwright's loop runs in this one."""
    email = f"agents-{uuid.uuid4().hex[:10]}@example.com"
    database_url = Settings.from_env(gateway_env, env_file=None).database_url
    with ThreadPoolExecutor(1) as thread:
        user_id = thread.submit(
            lambda: asyncio.run(add_user(database_url, email=email, password=PASSWORD))
        ).result()
    return Person(email, user_id)


def api(gateway: LiveServer, person: Person, path: str) -> httpx.Response:
    """The gateway's own answer, read beside the page with a login of the same user."""
    login = httpx.post(f"{gateway.url}/api/v1/auth/login", json=person.login)
    token = login.json()["access_token"]
    return httpx.get(gateway.url + path, headers={"authorization": f"Bearer {token}"}, timeout=10)


def without_toasts(page: Page) -> None:
    """The passing notices gone, so that a screenshot shows the page itself."""
    page.evaluate("document.getElementById('toasts').replaceChildren()")


def create_agent(page: Page, name: str, model: str, mode: str = "transparent") -> None:
    form = page.get_by_role("form", name="New agent")
    form.get_by_label("Name").fill(name)
    form.get_by_label("Model").fill(model)
    form.get_by_label("Provider").fill("workers-ai")
    form.get_by_label("Governance mode").select_option(mode)
    form.get_by_role("button", name="Create agent").click()
    expect(page.get_by_role("link", name=name)).to_be_focused()  # on the new agent, for the keyboard


def test_create_start_chat_streamed_and_its_proof_verified(
    page: Page, person: Person, provider: FakeChatProvider, dashboard_gateway: LiveServer
) -> None:
    sign_in(page, person.login, "#/agents")
    expect(page.get_by_role("heading", level=1)).to_have_text("Agents")
    expect(page.get_by_text("No agents yet")).to_be_visible()

    create_agent(page, "Scribe", "gated")
    row = page.get_by_role("row").filter(has_text="Scribe")
    expect(row).to_contain_text("Stopped")
    row.get_by_role("button", name="Start Scribe").click()
    expect(row).to_contain_text("Running")
    expect(row.get_by_role("button", name="Stop Scribe")).to_be_visible()
    agents = api(dashboard_gateway, person, "/v1/agents").json()["data"]
    assert [(a["agent_name"], a["model"], a["state"]) for a in agents] == [("Scribe", "gated", "running")]
    create_agent(page, "Archivist", "echo")
    expect(page.get_by_role("row").filter(has_text="Archivist")).to_contain_text("Stopped")
    assert_accessible(page)
    without_toasts(page)
    screenshot(page, "agents-list")

    row.get_by_role("link", name="Scribe").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Scribe")
    chat = page.get_by_role("region", name="Chat")
    expect(chat.get_by_role("status")).to_have_text("Connected.")
    chat.get_by_label("Message").fill("Hello there")
    chat.get_by_label("Message").press("Enter")

    log = chat.get_by_role("log", name="Conversation")
    mine = log.locator(".chat-user").last
    expect(mine).to_contain_text("Hello there")
    expect(mine).to_contain_text("Governance: allow (transparent)")
    reply = log.locator(".chat-assistant").last
    # The first chunk is on the page while the provider still holds back the rest of its answer.
    expect(reply.locator(".chat-text")).to_have_text("Echo")
    assert provider.recorder.wait_for("first_chunk_sent", 5) is not None
    assert provider.recorder.wait_for("finished", 0) is None
    expect(reply).to_contain_text("Streaming…")
    provider.release()
    expect(reply.locator(".chat-text")).to_have_text("Echo: Hello there")
    expect(reply).to_contain_text("18 tokens")
    quota = page.get_by_role("region", name="Quota")
    expect(quota.locator("[data-quota=messages_per_day]")).to_contain_text("1 of 200 used, 199 left")
    assert_accessible(page)
    without_toasts(page)
    screenshot(page, "agent-chat")

    messages = api(dashboard_gateway, person, f"/v1/agents/{agents[0]['id']}/messages").json()["data"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "Hello there"),
        ("assistant", "Echo: Hello there"),
    ]
    leaf_hash = messages[1]["leaf_hash"]
    expect(mine.get_by_role("link", name="Proof")).to_have_attribute(
        "href", f"#/proof/{messages[0]['leaf_hash']}"
    )
    reply.get_by_role("link", name="Proof").click()
    expect(page).to_have_url(f"{dashboard_gateway.url}/dashboard#/proof/{leaf_hash}")
    verdict = page.locator(".proof-verdict")
    expect(verdict).to_contain_text("✓ Verified")
    expect(page.locator("[data-step=root]")).to_contain_text("✓ Passed")
    expect(page.locator("[data-step=signature]")).to_contain_text("✓ Passed")
    assert_accessible(page)

    # Back on the agent: the conversation is there, and stopping it closes the chat.
    page.go_back()
    expect(log.locator(".chat-assistant .chat-text")).to_have_text(["Echo: Hello there"])
    page.get_by_role("button", name="Stop Scribe").click()
    # First and in one look: the toast goes after 4 s, which a busy host's round trips can outlast.
    expect(page.locator("#toasts")).to_contain_text(
        re.compile(r"Scribe stopped\. Checkpoint ckpt_\S+: 2 messages, log size")
    )
    expect(page.locator(".agent-facts")).to_contain_text("Stopped")
    expect(chat.get_by_label("Message")).to_be_disabled()
    stopped = api(dashboard_gateway, person, f"/v1/agents/{agents[0]['id']}").json()
    assert stopped["state"] == "stopped"


def test_vault_files_and_quota(page: Page, person: Person, dashboard_gateway: LiveServer) -> None:
    sign_in(page, person.login, "#/agents")
    create_agent(page, "Keeper", "echo")
    page.get_by_role("link", name="Keeper").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Keeper")
    agent_id = page.url.rsplit("/", 1)[1]

    vault = page.get_by_role("region", name="Vault")
    expect(vault).to_contain_text("No keys stored")
    vault.get_by_label("Provider").fill("openai")
    vault.get_by_label("API key").fill(BYOK_KEY)
    vault.get_by_role("button", name="Store key").click()
    stored = vault.locator("[data-provider=openai]")
    expect(stored).to_contain_text("openai")
    expect(vault.get_by_label("API key")).to_have_value("")
    assert BYOK_KEY not in page.content()  # a prefix only, never the key
    listed = api(dashboard_gateway, person, f"/v1/agents/{agent_id}/vault").json()["data"]
    assert [item["provider"] for item in listed] == ["openai"]
    expect(stored).to_contain_text(listed[0]["prefix"])

    files = page.get_by_role("region", name="Files")
    content = bytes(range(256)) * (FILE_BYTES // 256)
    page.evaluate(
        """() => {
            window.progressSeen = [];
            const bar = document.querySelector("progress");
            new MutationObserver(() => window.progressSeen.push(bar.value)).observe(bar, {attributes: true});
            const text = document.querySelector(".progress-text");
            new MutationObserver(() => window.progressSeen.push(text.textContent)).observe(
                text, {childList: true, characterData: true, subtree: true});
        }"""
    )
    throttle = page.context.new_cdp_session(page)
    throttle.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 2 * 1024 * 1024},
    )
    upload = FilePayload(name="notes.bin", mimeType="application/octet-stream", buffer=content)
    files.get_by_label("File to upload").set_input_files(files=[upload])
    files.get_by_role("button", name="Upload", exact=True).click()
    expect(files.get_by_label("Upload progress")).to_be_visible()
    expect(files.locator(".progress-text")).to_have_text("100% (3.0 MiB of 3.0 MiB)", timeout=20_000)
    throttle.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    link = files.get_by_role("link", name="notes.bin")
    expect(link).to_be_visible()
    seen = page.evaluate("window.progressSeen")
    partial = [
        v
        for v in seen
        if isinstance(v, str) and v.endswith("of 3.0 MiB)") and not v.startswith(("0%", "100%"))
    ]
    assert partial, seen  # the bar moved along the way, not just from nothing to done

    with page.expect_download() as download_info:
        link.click()
    download = download_info.value
    assert download.suggested_filename == "notes.bin"
    assert hashlib.sha256(download.path().read_bytes()).digest() == hashlib.sha256(content).digest()

    quota = page.get_by_role("region", name="Quota")
    expect(quota.locator("[data-quota=files]")).to_contain_text("1 of 100 used, 99 left")
    expect(quota.locator("[data-quota=storage_bytes]")).to_contain_text("3.0 MiB of 1.0 GiB used")
    expect(quota.get_by_label("Storage")).to_have_attribute("value", str(FILE_BYTES))
    expect(quota.get_by_label("Messages today")).to_have_attribute("value", "0")
    assert_accessible(page)

    files.get_by_role("button", name="Delete notes.bin").click()
    expect(files).to_contain_text("No files.")
    expect(quota.locator("[data-quota=files]")).to_contain_text("0 of 100 used")
    assert api(dashboard_gateway, person, f"/v1/agents/{agent_id}/files").json()["data"] == []

    vault.get_by_role("button", name="Delete the openai key").click()
    expect(vault).to_contain_text("No keys stored")
    assert api(dashboard_gateway, person, f"/v1/agents/{agent_id}/vault").json()["data"] == []
    assert json.dumps(page.evaluate("window.progressSeen")).count("Failed") == 0


def test_an_enforcing_agent_blocks_a_denied_message_and_says_so(
    page: Page, person: Person, provider: FakeChatProvider
) -> None:
    sign_in(page, person.login, "#/agents")
    create_agent(page, "Warden", "echo", mode="enforcing")
    # Keyboard only: the focused link opens the agent, Tab reaches its Start button.
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("Warden")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="← All agents")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Start Warden")).to_be_focused()
    page.keyboard.press("Enter")
    chat = page.get_by_role("region", name="Chat")
    expect(chat.get_by_role("status")).to_have_text("Connected.")
    chat.get_by_label("Message").fill("Tell me about Project Nightingale")
    chat.get_by_label("Message").press("Enter")
    mine = chat.locator(".chat-user").last
    expect(mine).to_contain_text("Governance: deny (enforcing)")
    expect(mine).to_contain_text("blocked: not sent to the model")
    expect(mine.get_by_role("link", name="Proof")).to_be_visible()
    expect(chat.get_by_label("Message")).to_be_enabled()
    expect(chat.locator(".chat-assistant")).to_have_count(0)
    assert provider.recorder.requests == []  # the model was never called
    assert_accessible(page)


def test_a_reply_cut_short_by_the_provider_is_marked_interrupted(page: Page, person: Person) -> None:
    sign_in(page, person.login, "#/agents")
    create_agent(page, "Flaky", "fails-midway")
    row = page.get_by_role("row").filter(has_text="Flaky")
    row.get_by_role("button", name="Start Flaky").click()
    expect(row.get_by_role("button", name="Stop Flaky")).to_be_visible()  # started, before its page is opened
    row.get_by_role("link", name="Flaky").click()
    chat = page.get_by_role("region", name="Chat")
    expect(chat.get_by_role("status")).to_have_text("Connected.")
    chat.get_by_label("Message").fill("Hello")
    chat.get_by_label("Message").press("Enter")
    reply = chat.locator(".chat-assistant").last
    expect(reply.locator(".chat-text")).to_have_text("Echo")
    expect(reply.locator(".chat-meta")).to_have_text("Interrupted")
    expect(chat.get_by_role("alert")).to_contain_text("Error (")
    expect(chat.get_by_label("Message")).to_be_enabled()
    assert_accessible(page)
