"""What request handlers share: settings, the engine, the signing keys and the login throttle."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service.keys import KeyCache
from auth_service.settings import AuthSettings
from auth_service.throttle import LoginThrottle


@dataclass
class AuthContext:
    settings: AuthSettings
    engine: AsyncEngine
    keys: KeyCache
    throttle: LoginThrottle
