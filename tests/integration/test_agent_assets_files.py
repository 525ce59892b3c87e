"""An agent's files over real HTTP: streamed uploads with their limits and quotas, downloads, deletion.

Multipart bodies are written by hand here, so that the tests control every byte a hostile client could send.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.settings import Settings
from tests.conftest import GatewayFactory
from tests.integration.test_agent_assets import (
    bearer,
    create_agent,
    create_key,
    error_code,
    login_new_user,
    rows,
)
from tests.serving import LiveServer, clean_env, serving

BOUNDARY = "gateway-test-boundary-7MA4YWxkTrZu0gW"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
MIB = 1024 * 1024


def part_head(
    filename: str | None = "a.txt", *, name: str = "file", content_type: str = "text/plain"
) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return (
        f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n".encode()
    )


def multipart(content: bytes, filename: str | None = "a.txt", *, content_type: str = "text/plain") -> bytes:
    return part_head(filename, content_type=content_type) + content + f"\r\n--{BOUNDARY}--\r\n".encode()


def upload(
    url: str, token: str, agent_id: str, body: bytes, *, content_type: str = MULTIPART
) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/agents/{agent_id}/files",
        content=body,
        headers={**bearer(token), "content-type": content_type},
        timeout=30,
    )


def files_dir(env: dict[str, str]) -> Path:
    return Settings.from_env(env, env_file=None).files_path


def incoming(env: dict[str, str]) -> list[Path]:
    folder = files_dir(env) / ".incoming"
    return list(folder.iterdir()) if folder.exists() else []


@pytest.fixture
def owner(gateway: LiveServer, gateway_env: dict[str, str]) -> str:
    return login_new_user(gateway.url, gateway_env)


@pytest.fixture
def agent(gateway: LiveServer, owner: str) -> str:
    return create_agent(gateway.url, owner)


def test_a_file_is_uploaded_listed_downloaded_and_deleted(
    gateway: LiveServer, gateway_env: dict[str, str], owner: str, agent: str
) -> None:
    content = os.urandom(300_000)

    created = upload(
        gateway.url, owner, agent, multipart(content, "report.pdf", content_type="application/pdf")
    )

    assert created.status_code == 201, created.text
    record = created.json()
    assert record["id"].startswith("file_")
    assert (record["filename"], record["content_type"]) == ("report.pdf", "application/pdf")
    assert (record["size"], record["sha256"]) == (len(content), hashlib.sha256(content).hexdigest())
    assert record["created_at"].endswith("Z")
    listing = httpx.get(f"{gateway.url}/v1/agents/{agent}/files", headers=bearer(owner))
    assert listing.json()["data"] == [record]

    download = httpx.get(f"{gateway.url}/v1/agents/{agent}/files/{record['id']}", headers=bearer(owner))
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["content-disposition"].startswith('attachment; filename="report.pdf"')
    assert download.headers["x-content-type-options"] == "nosniff"
    assert download.headers["content-type"] == "application/pdf"
    assert download.headers["content-length"] == str(len(content))
    stored = files_dir(gateway_env) / agent / record["id"]
    assert stored.read_bytes() == content

    deleted = httpx.delete(f"{gateway.url}/v1/agents/{agent}/files/{record['id']}", headers=bearer(owner))
    assert deleted.status_code == 204
    assert (
        httpx.get(f"{gateway.url}/v1/agents/{agent}/files/{record['id']}", headers=bearer(owner)).status_code
        == 404
    )
    assert (
        httpx.delete(
            f"{gateway.url}/v1/agents/{agent}/files/{record['id']}", headers=bearer(owner)
        ).status_code
        == 404
    )
    assert not stored.exists()
    assert httpx.get(f"{gateway.url}/v1/agents/{agent}/files", headers=bearer(owner)).json()["data"] == []


def test_a_file_of_the_official_client_shape_is_accepted(gateway: LiveServer, owner: str, agent: str) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/agents/{agent}/files",
        data={"purpose": "assistants"},
        files={"file": ("notes.md", b"# notes\n", "text/markdown")},
        headers=bearer(owner),
    )

    assert response.status_code == 201, response.text
    assert (response.json()["filename"], response.json()["size"]) == ("notes.md", 8)


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("../../../etc/passwd", "passwd"),
        ("/etc/shadow", "shadow"),
        ("C:\\Users\\x\\..\\evil.bat", "evil.bat"),
        ("..", "file"),
        ("bell\x07and\x1bescape\x7f.txt", "bellandescape.txt"),
        ("rtl\u202eexe.txt", "rtlexe.txt"),
        (None, "file"),
    ],
)
def test_filenames_are_neutralised(
    gateway: LiveServer, gateway_env: dict[str, str], owner: str, agent: str, sent: str | None, stored: str
) -> None:
    body = part_head(None, content_type="text/plain") if sent is None else b""
    if sent is not None:
        disposition = b'form-data; name="file"; filename="' + sent.encode() + b'"'
        body = f"--{BOUNDARY}\r\nContent-Disposition: ".encode() + disposition + b"\r\n\r\n"
    body += b"payload" + f"\r\n--{BOUNDARY}--\r\n".encode()

    response = upload(gateway.url, owner, agent, body)

    assert response.status_code == 201, response.text
    assert response.json()["filename"] == stored
    file_id = response.json()["id"]
    download = httpx.get(f"{gateway.url}/v1/agents/{agent}/files/{file_id}", headers=bearer(owner))
    assert download.content == b"payload"
    assert "/" not in download.headers["content-disposition"].split("filename=", 1)[1].split(";")[0]
    # Nothing but the agent's folder and the file's id ever names a path.
    assert (files_dir(gateway_env) / agent / file_id).is_file()
    assert not any(
        path.name == stored for path in files_dir(gateway_env).parent.glob("**/*") if path.is_file()
    )


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"file": "x"}', "application/json", 415),
        (multipart(b"x"), "multipart/form-data", 415),  # no boundary
        (b"", MULTIPART, 400),  # empty body
        (part_head() + b"cut off", MULTIPART, 400),  # ends early
        (part_head(name="other") + b"x" + f"\r\n--{BOUNDARY}--\r\n".encode(), MULTIPART, 400),  # no file part
        (part_head() + b"x\r\n" + part_head() + b"y" + f"\r\n--{BOUNDARY}--\r\n".encode(), MULTIPART, 400),
        (b"not a multipart body at all\r\n", MULTIPART, 400),
    ],
)
def test_malformed_uploads_are_refused_and_leave_nothing(
    gateway: LiveServer,
    gateway_env: dict[str, str],
    owner: str,
    agent: str,
    body: bytes,
    content_type: str,
    status: int,
) -> None:
    response = upload(gateway.url, owner, agent, body, content_type=content_type)

    assert response.status_code == status, response.text
    assert httpx.get(f"{gateway.url}/v1/agents/{agent}/files", headers=bearer(owner)).json()["data"] == []
    assert incoming(gateway_env) == []


@pytest.fixture(scope="module")
def small_limits(start_gateway: GatewayFactory) -> Iterator[LiveServer]:
    """A gateway on the same database with a 4 KiB file limit and a free tier of 10 kB and 3 files."""
    tiers = '{"free": {"storage_bytes": 10000, "files": 3}}'
    with start_gateway(MAX_UPLOAD_BYTES="4096", QUOTA_TIERS=tiers) as server:
        yield server


def test_a_file_over_the_limit_is_413_and_leaves_nothing(
    small_limits: LiveServer, gateway_env: dict[str, str], owner: str, agent: str
) -> None:
    assert upload(small_limits.url, owner, agent, multipart(b"x" * 4096)).status_code == 201

    response = upload(small_limits.url, owner, agent, multipart(b"x" * 4097))

    assert (response.status_code, error_code(response)) == (413, "file_too_large")
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert (
        len(httpx.get(f"{small_limits.url}/v1/agents/{agent}/files", headers=bearer(owner)).json()["data"])
        == 1
    )
    assert incoming(gateway_env) == []


def test_a_body_declared_far_over_the_limit_is_refused_before_it_is_read(
    small_limits: LiveServer, owner: str, agent: str
) -> None:
    with socket.create_connection(("127.0.0.1", small_limits.port)) as sock:
        sock.sendall(
            f"POST /v1/agents/{agent}/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {owner}\r\n"
            f"Content-Type: {MULTIPART}\r\nContent-Length: {10 * MIB}\r\n\r\n".encode()
        )
        sock.settimeout(10)
        answer = sock.recv(65536)

    assert answer.startswith(b"HTTP/1.1 413")
    assert b"file_too_large" in answer


def test_the_tiers_storage_and_file_quotas_are_413(small_limits: LiveServer, owner: str, agent: str) -> None:
    assert upload(small_limits.url, owner, agent, multipart(b"a" * 4000)).status_code == 201
    assert upload(small_limits.url, owner, agent, multipart(b"b" * 4000)).status_code == 201

    over_storage = upload(small_limits.url, owner, agent, multipart(b"c" * 2001))
    assert (over_storage.status_code, error_code(over_storage)) == (413, "storage_quota_exceeded")
    assert upload(small_limits.url, owner, agent, multipart(b"c" * 2000)).status_code == 201

    over_files = upload(small_limits.url, owner, agent, multipart(b""))
    assert (over_files.status_code, error_code(over_files)) == (413, "storage_quota_exceeded")

    quota = httpx.get(f"{small_limits.url}/v1/agents/{agent}/quota", headers=bearer(owner)).json()
    assert quota["used"]["storage_bytes"] == 10000 and quota["used"]["files"] == 3
    assert quota["remaining"]["storage_bytes"] == 0 and quota["remaining"]["files"] == 0


def test_concurrent_uploads_cannot_overshoot_the_storage_quota(
    small_limits: LiveServer, owner: str, agent: str
) -> None:
    statuses: list[int] = []

    def send() -> None:
        statuses.append(upload(small_limits.url, owner, agent, multipart(b"z" * 3000)).status_code)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [201] * 3 + [413] * 5
    listing = httpx.get(f"{small_limits.url}/v1/agents/{agent}/files", headers=bearer(owner)).json()["data"]
    assert sum(record["size"] for record in listing) == 9000


def test_an_upload_cut_off_by_the_client_leaves_nothing(
    gateway: LiveServer, gateway_env: dict[str, str], owner: str, agent: str
) -> None:
    head = part_head("big.bin")
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(
            f"POST /v1/agents/{agent}/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {owner}\r\n"
            f"Content-Type: {MULTIPART}\r\nContent-Length: {len(head) + 5 * MIB}\r\n\r\n".encode()
            + head
            + b"x" * (2 * MIB)
        )
        time.sleep(0.3)

    deadline = time.monotonic() + 5
    while incoming(gateway_env) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert incoming(gateway_env) == []
    assert httpx.get(f"{gateway.url}/v1/agents/{agent}/files", headers=bearer(owner)).json()["data"] == []


def test_files_go_with_their_agent(
    gateway: LiveServer, gateway_env: dict[str, str], owner: str, agent: str
) -> None:
    file_id = upload(gateway.url, owner, agent, multipart(b"kept until the agent goes")).json()["id"]
    assert (files_dir(gateway_env) / agent / file_id).is_file()

    assert httpx.delete(f"{gateway.url}/v1/agents/{agent}", headers=bearer(owner)).status_code == 204

    assert not (files_dir(gateway_env) / agent).exists()
    assert rows(gateway_env, "SELECT id FROM agent_files WHERE agent_id = :agent", agent=agent) == []


# Memory: a 200 MB upload through a `gateway serve` process of its own.

UPLOAD_MIB = 200
RSS_GROWTH_BOUND = 50 * MIB


def memory_of(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def pid_listening_on(port: int) -> int:
    """The `gateway serve --port PORT` process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\x00")
        except OSError:
            continue
        if b"serve" in arguments and str(port).encode() in arguments:
            return int(entry.name)
    raise AssertionError(f"no gateway serve process on port {port}")


class LargeBody:
    """A multipart body of `mib` MiB of varying bytes, produced a MiB at a time and hashed on the way."""

    def __init__(self, mib: int) -> None:
        self.mib = mib
        self.head = part_head("large.bin", content_type="application/octet-stream")
        self.tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        self.digest = hashlib.sha256()
        self.block = os.urandom(MIB)

    def __len__(self) -> int:
        return len(self.head) + self.mib * MIB + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        for number in range(self.mib):
            chunk = number.to_bytes(8, "big") + self.block[8:]
            self.digest.update(chunk)
            yield chunk
        yield self.tail


def test_a_200_mb_upload_streams_through_in_bounded_memory(
    gateway: LiveServer, gateway_env: dict[str, str], owner: str, agent: str, tmp_path: Path
) -> None:
    env = clean_env(
        **gateway_env,
        MAX_UPLOAD_BYTES=str(1024 * MIB),
        QUOTA_TIERS='{"free": {"storage_bytes": null, "files": null}}',
    )
    with serving(tmp_path, env=env) as url:
        pid = pid_listening_on(int(url.rsplit(":", 1)[1]))
        warm = upload(url, owner, agent, multipart(os.urandom(2 * MIB)))  # every code path loaded once
        assert warm.status_code == 201, warm.text
        httpx.delete(f"{url}/v1/agents/{agent}/files/{warm.json()['id']}", headers=bearer(owner))
        baseline = memory_of(pid)["VmRSS"]
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS

        body = LargeBody(UPLOAD_MIB)
        response = httpx.post(
            f"{url}/v1/agents/{agent}/files",
            content=iter(body),
            headers={**bearer(owner), "content-type": MULTIPART, "content-length": str(len(body))},
            timeout=120,
        )
        peak = memory_of(pid)["VmHWM"]

        assert response.status_code == 201, response.text
        record: dict[str, Any] = response.json()
        assert record["size"] == UPLOAD_MIB * MIB
        assert record["sha256"] == body.digest.hexdigest()
        assert peak - baseline < RSS_GROWTH_BOUND, f"the gateway grew by {(peak - baseline) / MIB:.1f} MiB"
        stored = files_dir(gateway_env) / agent / record["id"]
        assert stored.stat().st_size == UPLOAD_MIB * MIB
        httpx.delete(f"{url}/v1/agents/{agent}/files/{record['id']}", headers=bearer(owner))
        assert not stored.exists()


def test_a_download_of_an_agent_key_is_its_own_agents_only(
    gateway: LiveServer, owner: str, agent: str
) -> None:
    other = create_agent(gateway.url, owner)
    file_id = upload(gateway.url, owner, other, multipart(b"other agent's")).json()["id"]
    key = create_key(gateway.url, owner, agent)["raw_key"]

    mine = httpx.get(f"{gateway.url}/v1/agents/{agent}/files/{file_id}", headers=bearer(key))
    theirs = httpx.get(f"{gateway.url}/v1/agents/{other}/files/{file_id}", headers=bearer(key))

    assert mine.status_code == 404  # not this agent's file
    assert theirs.status_code == 403  # not this key's agent
