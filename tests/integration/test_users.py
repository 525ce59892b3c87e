"""Users as the operator manages them (`gateway users ...`) and as login keeps their password hashes current."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import httpx
from argon2 import PasswordHasher
from sqlalchemy import select, update

from gateway.db.engine import Database
from gateway.db.models import User
from gateway.settings import Settings
from tests.conftest import add_user
from tests.serving import GATEWAY, LiveServer, clean_env


def users_command(tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GATEWAY, "users", *args],
        input=stdin,
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_create_reads_the_password_from_stdin_with_an_optional_confirmation(tmp_path: Path) -> None:
    created = users_command(
        tmp_path,
        "create",
        "--email",
        "Ops@Example.com",
        "--admin",
        stdin="long enough secret\nlong enough secret\n",
    )
    single_line = users_command(
        tmp_path, "create", "--email", "dev@example.com", stdin="another long secret\n"
    )
    listed = users_command(tmp_path, "list")

    assert created.returncode == 0, created.stderr
    assert single_line.returncode == 0, single_line.stderr
    rows = listed.stdout.splitlines()[1:]
    assert [row.split("\t")[1:4] for row in rows] == [
        ["ops@example.com", "admin", "active"],
        ["dev@example.com", "user", "active"],
    ]


def test_create_refuses_a_mismatched_confirmation_a_weak_password_and_a_duplicate(tmp_path: Path) -> None:
    mismatch = users_command(
        tmp_path, "create", "--email", "a@example.com", stdin="long enough one\nlong enough two\n"
    )
    weak = users_command(tmp_path, "create", "--email", "a@example.com", stdin="short\n")
    users_command(tmp_path, "create", "--email", "a@example.com", stdin="long enough one\n")
    duplicate = users_command(tmp_path, "create", "--email", "A@example.com", stdin="long enough one\n")
    not_an_email = users_command(tmp_path, "create", "--email", "nobody", stdin="long enough one\n")

    for result in (mismatch, weak, duplicate, not_an_email):
        assert result.returncode == 1
        assert result.stderr.startswith("gateway: ") and "Traceback" not in result.stderr


def test_disable_marks_the_user_and_an_unknown_email_is_an_error(tmp_path: Path) -> None:
    users_command(tmp_path, "create", "--email", "a@example.com", stdin="long enough one\n")

    disabled = users_command(tmp_path, "disable", "--email", "a@example.com")
    unknown = users_command(tmp_path, "disable", "--email", "b@example.com")

    assert disabled.returncode == 0
    assert "disabled" in users_command(tmp_path, "list").stdout.splitlines()[1]
    assert unknown.returncode == 1 and "no user" in unknown.stderr


async def stored_hash(database_url: str, user_id: str, *, replace_with: str | None = None) -> str:
    database = Database(database_url)
    database.open()
    try:
        async with database.session() as session, session.begin():
            if replace_with is not None:
                await session.execute(
                    update(User).where(User.id == user_id).values(password_hash=replace_with)
                )
            return str(await session.scalar(select(User.password_hash).where(User.id == user_id)))
    finally:
        await database.close()


def test_login_rehashes_a_password_stored_with_outdated_parameters(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    database_url = Settings.from_env(gateway_env, env_file=None).database_url
    login = {"email": f"{uuid.uuid4().hex}@example.com", "password": "correct horse battery staple"}
    user_id = asyncio.run(add_user(database_url, **login))
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(login["password"])
    asyncio.run(stored_hash(database_url, user_id, replace_with=weak))

    response = httpx.post(f"{gateway.url}/api/v1/auth/login", json=login)

    assert response.status_code == 200
    rehashed = asyncio.run(stored_hash(database_url, user_id))
    assert rehashed != weak and not PasswordHasher().check_needs_rehash(rehashed)
