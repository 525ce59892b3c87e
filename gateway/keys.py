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


@dataclass(frozen=True, slots=True)
class ServerKeys:
    """The keys identity needs: the HS256 secret of access tokens and the HMAC key tokens are stored under."""

    platform_jwt_secret: bytes = field(repr=False)
    token_hash_key: bytes = field(repr=False)


def load_server_keys(settings: Settings) -> ServerKeys:
    """The configured keys, generating (once, race-free across workers) those left unset."""
    folder = settings.data_dir / KEYS_FOLDER
    return ServerKeys(
        platform_jwt_secret=settings.platform_jwt_secret or _generated(folder / "platform_jwt_secret"),
        token_hash_key=settings.token_hash_key or _generated(folder / "token_hash_key"),
    )


def _generated(path: Path) -> bytes:
    """The key stored at `path`, created with owner-only permissions when it does not exist yet.

    The key is written to a private temporary file and linked into place, so a concurrent reader (another
    worker starting) sees either no file or a whole key, and the first writer wins.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
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
