"""Authentication: user JWTs (HS256, `JWT_SECRET`) and service tokens for `/internal/` routes.

The algorithm is pinned, so `alg: none` and algorithm-confusion tokens are refused. User and service tokens
are signed with different secrets, so neither can stand in for the other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeGuard, TypeVar

import jwt
from fastapi import Depends, Request

from lumiku_common.errors import Forbidden, Unauthorized
from lumiku_common.settings import ServiceSettings

ALGORITHM = "HS256"
SERVICE_AUDIENCE = "lumiku-internal"
SERVICE_TOKEN_HEADER = "X-Service-Token"
SERVICE_TOKEN_TTL = 300

Role = Literal["user", "admin"]


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str | None
    role: Role = "user"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class InvalidToken(Unauthorized):
    message = "Invalid token"


MAX_USER_ID_LENGTH = 128  # every service's user_id column


def _valid_user_id(value: object) -> TypeGuard[str]:
    """1-128 printable characters: ids go into every table (no NUL in PostgreSQL text), key and log line."""
    return isinstance(value, str) and 0 < len(value) <= MAX_USER_ID_LENGTH and value.isprintable()


# Verified tokens, until they expire: every request of a session carries the same token (and every call of a
# service the same service token, minted for minutes), and checking its HMAC and claims again cost more than
# the rest of a simple read. Sound because verification is a pure function of token, secret and time, and a
# token that verified stays valid until its `exp` (an `nbf` or `iat` it passed stays passed). One cache per
# kind of token, so one kind can never be answered from the other's. Cleared whole when full: a bound, not an LRU.
_VERIFIED_MAX = 10_000
T = TypeVar("T")


def _remembered(
    verified: dict[tuple[str, str], tuple[T, float]],
    verify: Callable[[str, str], tuple[T, float]],
    token: str,
    secret: str,
) -> T:
    cached = verified.get((token, secret))
    if cached is not None and time.time() < cached[1]:
        return cached[0]
    value, expires = verify(token, secret)
    if len(verified) >= _VERIFIED_MAX:
        verified.clear()
    verified[(token, secret)] = (value, expires)
    return value


_USERS: dict[tuple[str, str], tuple[User, float]] = {}


def decode_user_token(token: str, secret: str) -> User:
    return _remembered(_USERS, _verify_user_token, token, secret)


def _verify_user_token(token: str, secret: str) -> tuple[User, float]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["exp"], "verify_aud": False}
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(headers={"WWW-Authenticate": "Bearer"}) from exc
    user_id = claims.get("userId") or claims.get("sub")
    role = claims.get("role", "user")
    if not _valid_user_id(user_id) or role not in ("user", "admin"):
        # Validly signed, but not a user this system can hold: the client's token is wrong, not the server.
        raise InvalidToken(headers={"WWW-Authenticate": "Bearer"})
    email = claims.get("email")
    return User(id=user_id, email=email if isinstance(email, str) else None, role=role), float(claims["exp"])


def mint_user_token(
    secret: str,
    user_id: str,
    email: str | None = None,
    role: Role = "user",
    ttl: timedelta = timedelta(days=7),
) -> str:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {"userId": user_id, "sub": user_id, "role": role, "iat": now, "exp": now + ttl}
    if email:
        claims["email"] = email
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


def settings_of(request: Request) -> ServiceSettings:
    settings: ServiceSettings = request.app.state.settings
    return settings


# Dependencies are `async def` although they never await: FastAPI runs a plain `def` dependency in a worker
# thread, a thread hop per request for a few microseconds of work.
async def current_user(request: Request) -> User:
    user = decode_user_token(bearer_token(request), settings_of(request).jwt_secret)
    request.state.user = user
    return user


async def current_admin(user: Annotated[User, Depends(current_user)]) -> User:
    if not user.is_admin:
        raise Forbidden("Admin access required")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
AdminUser = Annotated[User, Depends(current_admin)]


# --- service-to-service -----------------------------------------------------------------------------


class ServiceTokens:
    """Mints (and caches) this service's token for calls to other services' `/internal/` routes."""

    def __init__(self, secret: str, issuer: str):
        self._secret, self._issuer = secret, issuer
        self._token, self._expires = "", 0.0

    def token(self) -> str:
        if time.time() > self._expires - 60:
            now = int(time.time())
            self._token = jwt.encode(
                {"iss": self._issuer, "aud": SERVICE_AUDIENCE, "iat": now, "exp": now + SERVICE_TOKEN_TTL},
                self._secret,
                algorithm=ALGORITHM,
            )
            self._expires = now + SERVICE_TOKEN_TTL
        return self._token


_SERVICES: dict[tuple[str, str], tuple[str, float]] = {}


def _verify_service_token(token: str, secret: str) -> tuple[str, float]:
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], audience=SERVICE_AUDIENCE, options={"require": ["exp", "iss", "aud"]}
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken() from exc
    return str(claims["iss"]), float(claims["exp"])


def decode_service_token(token: str, secret: str) -> str:
    """The calling service's name."""
    return _remembered(_SERVICES, _verify_service_token, token, secret)


async def service_caller(request: Request) -> str:
    token = request.headers.get(SERVICE_TOKEN_HEADER)
    if not token:
        raise Unauthorized()
    return decode_service_token(token, settings_of(request).service_token_secret)


ServiceCaller = Annotated[str, Depends(service_caller)]
