"""What `gateway serve` writes to disk is its owner's alone, whatever the umask: DATA_DIR 0700, the SQLite database,
the generated keys, the usage journal and the agents' files 0600 (their folders 0700)."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import httpx

from gateway.settings import Settings
from tests.conftest import add_user
from tests.serving import clean_env, serving

PASSWORD = "correct horse battery staple"
JOURNAL_SECONDS = 10.0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def journal_files(folder: Path) -> list[Path]:
    """The journal's files, once the usage writer has opened it (at its first flush, half a second after start)."""
    deadline = time.monotonic() + JOURNAL_SECONDS
    while not (folder.is_dir() and (files := list(folder.iterdir()))):
        assert time.monotonic() < deadline, f"no journal in {folder}"
        time.sleep(0.05)
    return files


def test_the_data_directory_and_everything_in_it_are_the_owners_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = tmp_path / "uploads" / "agents"  # FILES_DIR and a parent, neither made yet
    env = clean_env(DATA_DIR=str(data), FILES_DIR=str(files))
    previous = os.umask(0o002)  # a permissive umask, inherited by the server: the modes must not depend on it
    try:
        with serving(tmp_path, env=env) as url:
            database_url = Settings.from_env(env, env_file=None).database_url
            asyncio.run(add_user(database_url, email="modes@example.com", password=PASSWORD))
            login = {"email": "modes@example.com", "password": PASSWORD}
            token = httpx.post(f"{url}/api/v1/auth/login", json=login).json()["access_token"]
            headers = {"authorization": f"Bearer {token}"}
            agent = httpx.post(f"{url}/v1/agents", json={}, headers=headers).json()
            upload = httpx.post(
                f"{url}/v1/agents/{agent['id']}/files",
                files={"file": ("notes.txt", b"private notes", "text/plain")},
                headers=headers,
            )
            assert upload.status_code == 201, upload.text
            # While serving: SQLite removes its -wal and -shm files at the last close.
            database_modes = {path.name: mode(path) for path in data.glob("gateway.db*")}
            journal_modes = [mode(path) for path in journal_files(data / "usage-journal")]
    finally:
        os.umask(previous)

    assert mode(data) == 0o700
    assert database_modes.keys() >= {"gateway.db", "gateway.db-wal", "gateway.db-shm"}
    assert set(database_modes.values()) == {0o600}
    assert mode(data / "keys") == 0o700
    keys = list((data / "keys").iterdir())
    assert keys and all(mode(key) == 0o600 for key in keys)
    assert mode(data / "usage-journal") == 0o700
    assert journal_modes and set(journal_modes) == {0o600}
    stored = [path for path in files.rglob("*") if path.is_file()]
    assert [path.read_bytes() for path in stored] == [b"private notes"]
    assert mode(stored[0]) == 0o600
    assert all(mode(folder) == 0o700 for folder in [files, *(p for p in files.rglob("*") if p.is_dir())])


def test_the_folders_it_makes_on_the_way_to_the_data_directory_are_the_owners_alone(tmp_path: Path) -> None:
    """DATA_DIR (and a SQLite file of its own elsewhere) below folders that do not exist yet: each folder the
    gateway makes is 0700, not the umask's choice (with 000, a world-writable parent would let anyone swap the
    data directory for their own)."""
    data = tmp_path / "srv" / "gateway" / "data"
    database = tmp_path / "db" / "sqlite" / "gateway.db"
    env = clean_env(DATA_DIR=str(data), DATABASE_URL=f"sqlite+aiosqlite:///{database}")
    previous = os.umask(0o000)
    try:
        with serving(tmp_path, env=env):
            pass
    finally:
        os.umask(previous)

    made = [tmp_path / "srv", tmp_path / "srv" / "gateway", data, tmp_path / "db", database.parent]
    assert {folder.name: mode(folder) for folder in made} == {folder.name: 0o700 for folder in made}
    assert mode(database) == 0o600
