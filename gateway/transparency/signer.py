"""Ed25519 signed notes (c2sp.org/signed-note): signing the log's checkpoints, and opening them with a public key.

A note is its text, a blank line, and signature lines `— {key name} {base64(key id || signature)}`; the key id is
the first 4 bytes of SHA-256(key name || "\\n" || 0x01 || public key), 0x01 naming Ed25519.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ED25519 = 0x01
SIGNATURE_PREFIX = "\u2014 "  # an em dash and a space
KEY_ID_SIZE = 4
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
KEY_ID_HEX = re.compile(r"[0-9a-fA-F]{8}")


class NoteError(ValueError):
    """A note that is malformed, or carries no valid signature by the key it is opened with."""


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte id that binds a key name to an Ed25519 public key."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()[:KEY_ID_SIZE]


class NoteSigner:
    """Signs note texts as `name` with an Ed25519 key made from a 32-byte seed."""

    def __init__(self, seed: bytes, *, name: str) -> None:
        self.name = name
        self._private_key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key = self._private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id(name, self.public_key)

    @property
    def verifier_key(self) -> str:
        """`{name}+{key id as hex}+{base64(0x01 || public key)}`, the form verifiers are configured with."""
        encoded = base64.b64encode(bytes([ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def sign(self, text: str) -> str:
        """The signed note of `text`, which must end with a newline and hold no blank line."""
        if not text.endswith("\n") or "\n\n" in text:
            raise ValueError("a note's text ends with a newline and has no blank line")
        signature = self._private_key.sign(text.encode())
        encoded = base64.b64encode(self.key_id + signature).decode()
        return f"{text}\n{SIGNATURE_PREFIX}{self.name} {encoded}\n"


class NoteVerifier:
    """An Ed25519 public key, with the name it signs under when known."""

    def __init__(self, public_key: bytes, *, name: str | None = None) -> None:
        if len(public_key) != PUBLIC_KEY_SIZE:
            raise NoteError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes")
        self.public_key = public_key
        self.name = name
        try:
            self._key = Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError:
            raise NoteError("not an Ed25519 public key") from None

    @classmethod
    def from_text(cls, text: str) -> NoteVerifier:
        """A verifier key (`name+keyid+base64(0x01 || key)`), or a bare public key in base64 or hex.

        Raises NoteError when it is neither, or when a verifier key's id does not match its name and key.
        """
        text = text.strip()
        parts = text.split("+", 2)  # a name has no "+", a key id is hex; base64 may hold "+"
        if len(parts) == 3 and parts[0] and KEY_ID_HEX.fullmatch(parts[1]):
            name, hex_id, encoded = parts
            raw = _b64(encoded)
            if raw is not None and len(raw) == 1 + PUBLIC_KEY_SIZE and raw[0] == ED25519:
                if key_id(name, raw[1:]).hex() != hex_id.lower():
                    raise NoteError("the verifier key's id does not match its name and key")
                return cls(raw[1:], name=name)
        raw = bytes.fromhex(text) if HEX_KEY.fullmatch(text) else _b64(text)
        if raw is None or len(raw) != PUBLIC_KEY_SIZE:
            raise NoteError("expected a verifier key (name+id+key) or a base64 Ed25519 public key")
        return cls(raw)

    def open(self, note: str) -> tuple[str, str]:
        """(the note's text, the name it was signed under) when one signature line is by this key.

        Raises NoteError when the note is malformed or no signature by this key verifies.
        """
        split = note.rfind("\n\n")
        if split < 0 or not note.endswith("\n"):
            raise NoteError("a signed note is its text, a blank line and signature lines")
        text, signatures = note[: split + 1], note[split + 2 : -1].split("\n")
        for line in signatures:
            if not line.startswith(SIGNATURE_PREFIX) or line.count(" ") != 2:
                raise NoteError("malformed signature line")
            name, encoded = line[len(SIGNATURE_PREFIX) :].split(" ")
            raw = _b64(encoded)
            if raw is None or len(raw) != KEY_ID_SIZE + SIGNATURE_SIZE:
                raise NoteError("malformed signature")
            if self.name not in (None, name) or raw[:KEY_ID_SIZE] != key_id(name, self.public_key):
                continue  # another signer's line
            try:
                self._key.verify(raw[KEY_ID_SIZE:], text.encode())
            except InvalidSignature:
                raise NoteError("the signature does not verify") from None
            return text, name
        raise NoteError("the note has no signature by this key")


def _b64(text: str) -> bytes | None:
    """Standard base64 in its one canonical spelling (a changed padding bit must not go unnoticed), or None."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.b64encode(raw).decode() == text else None
