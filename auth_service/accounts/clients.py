"""The client registry (RFC 6749 §2), pure: who may use this server, how each authenticates, what it may get.

Built from configuration (settings.py: TOKENLIFE_CLIENTS, and TOKENLIFE_SERVICE_CLIENTS as a shorthand for
resource services). Two kinds:

- public clients (a browser console, a CLI) hold no secret (RFC 6749 §2.1); they identify themselves with
  `client_id` at the token endpoint and may use the grants they are registered for;
- confidential clients authenticate with HTTP Basic (client_secret_basic). Resource services (no grant, no
  scopes) read the log and the revocation snapshot and introspect tokens. Shared Signals receivers (ssf/)
  are registered for the `client_credentials` grant and the SSF scopes (`ssf.read`, `ssf.manage`, named by
  the CAEP Interoperability Profile), and only they may get those scopes.

Secrets are kept as SHA-256 digests, not argon2: a client secret is machine-generated with high entropy
(`tokenlife clients secret` makes 256 bits), so a fast hash cannot be reversed by guessing, and resource
services authenticate on every poll of the log (about once a second each), where tens of milliseconds of
argon2 per request would be CPU spent on nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

GrantType = Literal["password", "refresh_token", "client_credentials"]
GRANT_TYPES: tuple[GrantType, ...] = ("password", "refresh_token", "client_credentials")
PUBLIC_GRANT_TYPES: tuple[GrantType, ...] = ("password", "refresh_token")
# Scopes of the Shared Signals management API (CAEP Interoperability Profile, "OAuth Scopes"): never a
# user's, only a confidential receiver's, through client_credentials.
SSF_SCOPES = ("ssf.read", "ssf.manage")
MAX_CLIENT_ID = 128
MIN_SERVICE_SECRET = 16
_UNKNOWN = "sha256:" + "0" * 64  # compared against for an unknown client, so both cost the same


def secret_hash(secret: str) -> str:
    """The stored form of a client secret: `sha256:` and the hex digest."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    """A fresh client secret: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


class ClientSpec(BaseModel):
    """One registered client, as configured."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["public", "confidential"]
    secret_hash: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")
    grant_types: tuple[GrantType, ...] = ()
    scopes: tuple[str, ...] | None = Field(
        default=None, description="Scopes this client may get; absent: every scope the server offers."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.type == "public" and self.secret_hash is not None:
            raise ValueError("a public client has no secret_hash")
        if self.type == "confidential" and self.secret_hash is None:
            raise ValueError("a confidential client needs a secret_hash")
        if self.type == "public" and "client_credentials" in self.grant_types:
            raise ValueError("a public client cannot use client_credentials (it has no secret)")
        if self.type == "confidential" and set(self.grant_types) - {"client_credentials"}:
            raise ValueError("confidential clients may use client_credentials alone")
        if self.type == "confidential" and self.scopes and set(self.scopes) - set(SSF_SCOPES):
            raise ValueError(f"a confidential client may get the scopes {list(SSF_SCOPES)} only")
        return self


@dataclass(frozen=True)
class ClientRegistry:
    """The registered clients, and the public client a token request without client_id stands for."""

    clients: Mapping[str, ClientSpec]
    default_client_id: str = ""

    def public_client(self, client_id: str | None) -> tuple[str, ClientSpec] | None:
        """The public client a token request names (or the default one); None if there is no such client."""
        name = client_id or self.default_client_id
        spec = self.clients.get(name) if name else None
        if spec is None or spec.type != "public":
            return None
        return name, spec

    def receiver(self, client_id: str) -> ClientSpec | None:
        """The confidential client registered for client_credentials with this id (an SSF receiver)."""
        spec = self.clients.get(client_id)
        if spec is None or spec.type != "confidential" or "client_credentials" not in spec.grant_types:
            return None
        return spec

    def authenticate(self, client_id: str, secret: str) -> bool:
        """Whether the confidential client's secret is right, in constant time whether or not it exists."""
        spec = self.clients.get(client_id)
        stored = spec.secret_hash if spec is not None and spec.secret_hash else _UNKNOWN
        match = hmac.compare_digest(secret_hash(secret).encode(), stored.encode())
        return match and spec is not None and spec.type == "confidential"


def registry_problems(
    clients: Mapping[str, ClientSpec],
    service_secrets: Mapping[str, str],
    scopes: set[str],
    *,
    dev: bool,
    dev_secret: str,
) -> list[str]:
    """What is wrong with a client registry (TOKENLIFE_CLIENTS, the TOKENLIFE_SERVICE_CLIENTS shorthand's
    secrets, the scopes offered); outside dev, short secrets and the well-known dev one are refused too."""
    problems: list[str] = []
    if not dev and any(len(secret) < MIN_SERVICE_SECRET for secret in service_secrets.values()):
        problems.append(
            f"TOKENLIFE_SERVICE_CLIENTS has a secret shorter than {MIN_SERVICE_SECRET} characters"
        )
    dev_hash = secret_hash(dev_secret)
    if not dev and (
        dev_secret in service_secrets.values() or any(c.secret_hash == dev_hash for c in clients.values())
    ):
        problems.append("a client uses the well-known dev service secret")
    if both := sorted(set(clients) & set(service_secrets)):
        problems.append(f"clients {both} are in both TOKENLIFE_CLIENTS and TOKENLIFE_SERVICE_CLIENTS")
    if too_long := sorted(n for n in [*clients, *service_secrets] if len(n) > MAX_CLIENT_ID):
        problems.append(f"client ids longer than {MAX_CLIENT_ID} characters: {too_long}")
    for name, spec in clients.items():
        if spec.type == "public" and spec.scopes is not None and not set(spec.scopes) <= scopes:
            problems.append(f"client {name!r} may get scopes outside TOKENLIFE_SCOPES")
    return problems
