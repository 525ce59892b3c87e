"""Hand-made JWTs for the attack tests: unsigned, HS256 with any secret, tampered payloads and signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: dict[str, Any]) -> str:
    return b64(json.dumps(obj).encode())


def public_pem(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def unsigned(payload: dict[str, Any], signature: str = "", **header: Any) -> str:
    """An `alg: none` token, with `signature` (empty by default) appended as it is."""
    return f"{b64json({'alg': 'none', 'typ': 'JWT', **header})}.{b64json(payload)}.{signature}"


def hs256_by_hand(payload: dict[str, Any], secret: bytes, **header: Any) -> str:
    """An HS256 token built without pyjwt (which refuses a PEM as an HMAC secret)."""
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT', **header})}.{b64json(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def with_payload(token: str, **changes: Any) -> str:
    """`token` with claims changed and the original signature kept."""
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"{header}.{b64json({**decoded, **changes})}.{signature}"


def with_bad_signature(token: str) -> str:
    # The first character: flipping the last one may only touch padding bits.
    header, payload, signature = token.split(".")
    return f"{header}.{payload}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}"
