"""The signing keys an instance holds, as plain values: what access.py signs and verifies with. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

ALGORITHM = "RS256"


@dataclass(frozen=True)
class SigningKey:
    """A private key and its kid."""

    kid: str
    private_key: rsa.RSAPrivateKey


@dataclass(frozen=True)
class KeyRing:
    """What an instance signs with and publishes, as loaded at `loaded_at`."""

    active: SigningKey | None
    jwks: dict[str, Any]
    public_keys: dict[str, rsa.RSAPublicKey]
    loaded_at: datetime
