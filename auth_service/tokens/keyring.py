"""The signing keys an instance holds, as plain values: what access.py signs and verifies with. Pure.

Three JWS algorithms can sign: ES256 (the default), EdDSA (Ed25519) and RS256. Each key is made for one
algorithm and keeps it for life (the `alg` of its JWK, the `alg` column of `signing_keys`); a token is
verified only with the algorithm its key was made for, whatever its header says.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256

Algorithm = Literal["ES256", "EdDSA", "RS256"]
ALGORITHMS: tuple[Algorithm, ...] = get_args(Algorithm)
# ES256 signs in about a tenth of RS256's time (the auth service signs every token it issues) and verifies
# in under twice its time (a resource instance verifies a token once, then serves it from its cache).
DEFAULT_ALGORITHM: Algorithm = "ES256"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def algorithm_of(key: PrivateKey | PublicKey) -> Algorithm:
    """The one algorithm a key of this type signs with here (P-256 only for EC)."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise ValueError(f"an EC key on {key.curve.name} is not used here (ES256 needs P-256)")


@dataclass(frozen=True)
class SigningKey:
    """A private key and its kid; `alg` is the JWS algorithm it signs with."""

    kid: str
    private_key: PrivateKey

    @property
    def alg(self) -> Algorithm:
        """The JWS algorithm this key signs with."""
        return algorithm_of(self.private_key)


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    """A public key bound to its one algorithm."""

    alg: Algorithm
    key: PublicKey

    def verify(self, signature: bytes, signing_input: bytes) -> bool:
        """True when `signature` is this key's JWS signature over `signing_input` (RFC 7518 encodings)."""
        try:
            if isinstance(self.key, rsa.RSAPublicKey):
                self.key.verify(signature, signing_input, PKCS1v15(), SHA256())
            elif isinstance(self.key, ed25519.Ed25519PublicKey):
                self.key.verify(signature, signing_input)
            else:
                if len(signature) != 64:  # ES256: R and S, 32 bytes each (RFC 7518 section 3.4)
                    return False
                der = encode_dss_signature(int.from_bytes(signature[:32]), int.from_bytes(signature[32:]))
                self.key.verify(der, signing_input, ec.ECDSA(SHA256()))
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class KeyRing:
    """What an instance signs with and publishes, as loaded at `loaded_at`."""

    active: SigningKey | None
    jwks: dict[str, Any]
    public_keys: dict[str, VerifyingKey]
    loaded_at: datetime
