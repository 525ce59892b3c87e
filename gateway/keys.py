"""The server's secret keys: from the settings when given, else generated once into the data directory.

A generated key suits one instance; several instances on one database must be given the same keys (API.md).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from gateway.settings import Settings

KEY_BYTES = 32
KEYS_FOLDER = "keys"
VAULT_KEY_FILE = "vault_master_key"
PRIVATE_FOLDER_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


@dataclass(frozen=True, slots=True)
class ServerKeys:
    """The server's keys: the HS256 secret of access tokens, the HMAC key tokens are stored under, and the
    vault's AES-256 master key."""

    platform_jwt_secret: bytes = field(repr=False)
    token_hash_key: bytes = field(repr=False)
    vault_master_key: bytes = field(repr=False)
    log_signing_key: bytes = field(repr=False)  # the transparency log's Ed25519 seed


def load_server_keys(settings: Settings) -> ServerKeys:
    """The configured keys, generating (once, race-free across workers) those left unset."""
    folder = settings.data_dir / KEYS_FOLDER
    return ServerKeys(
        platform_jwt_secret=settings.platform_jwt_secret or _generated(folder / "platform_jwt_secret"),
        token_hash_key=settings.token_hash_key or _generated(folder / "token_hash_key"),
        vault_master_key=settings.vault_master_key or _generated(folder / VAULT_KEY_FILE)[:KEY_BYTES],
        log_signing_key=settings.log_signing_key or _generated(folder / "log_signing_key")[:KEY_BYTES],
    )


def generated_vault_key(settings: Settings) -> bytes | None:
    """The vault key generated into the data directory, if one was (without generating it): after
    `VAULT_MASTER_KEY` is set, the key the records were sealed under until then."""
    path = settings.data_dir / KEYS_FOLDER / VAULT_KEY_FILE
    return path.read_bytes()[:KEY_BYTES] if path.is_file() else None


def _generated(path: Path) -> bytes:
    """The key stored at `path`, created with owner-only permissions when it does not exist yet.

    The key is written to a private temporary file and linked into place, so a concurrent reader (another
    worker starting) sees either no file or a whole key, and the first writer wins.
    """
    _make_private_folder(path.parent)
    if not path.exists():
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        os.fchmod(descriptor, PRIVATE_FILE_MODE)  # exactly, whatever the umask
        with os.fdopen(descriptor, "wb") as file:
            file.write(secrets.token_bytes(KEY_BYTES))
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise RuntimeError(f"{path} holds a truncated key; delete it to generate a new one")
    return key


def _make_private_folder(folder: Path) -> None:
    """The keys' folder, created 0700 whatever the umask, and so is each missing parent (the data directory, when
    a command reads the keys before anything made it); another worker may be creating them too."""
    if folder.is_dir():
        return
    _make_private_folder(folder.parent)
    try:
        folder.mkdir(mode=PRIVATE_FOLDER_MODE)
    except FileExistsError:
        return
    os.chmod(folder, PRIVATE_FOLDER_MODE)
