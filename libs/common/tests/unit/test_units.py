"""Framework-free units of libs/common: settings refusal, tokens, ids, times, zod-like issues."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Literal

import jwt
import pytest
from pydantic import BaseModel, StringConstraints, ValidationError

from lumiku_common.auth import InvalidToken, ServiceTokens, decode_user_token, mint_user_token
from lumiku_common.errors import zod_issues
from lumiku_common.ids import new_id
from lumiku_common.schemas import CleanStr, RequestModel, iso_utc
from lumiku_common.settings import DEV_JWT_SECRET, ServiceSettings

SECRET = "s" * 40


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_settings_refuse_dev_or_short_secrets_outside_development(environment):
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        ServiceSettings(environment=environment)
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        ServiceSettings(environment=environment, jwt_secret="short", service_token_secret="x" * 40)
    with pytest.raises(ValidationError, match="SERVICE_TOKEN_SECRET"):
        ServiceSettings(environment=environment, jwt_secret="x" * 40)
    with pytest.raises(ValidationError, match="MEDIA_URL_SECRET"):
        ServiceSettings(environment=environment, jwt_secret="x" * 40, service_token_secret="y" * 40)
    ok = ServiceSettings(
        environment=environment, jwt_secret="x" * 40, service_token_secret="y" * 40, media_url_secret="z" * 40
    )
    assert ok.jwt_secret == "x" * 40


@pytest.mark.parametrize(
    "secrets",
    [("x" * 40, "x" * 40, "z" * 40), ("x" * 40, "y" * 40, "x" * 40), ("x" * 40, "y" * 40, "y" * 40)],
    ids=["jwt=service", "jwt=media", "service=media"],
)
def test_settings_refuse_one_secret_for_two_purposes_outside_development(secrets):
    jwt_secret, service_token_secret, media_url_secret = secrets
    with pytest.raises(ValidationError, match="must differ"):
        ServiceSettings(
            environment="production",
            jwt_secret=jwt_secret,
            service_token_secret=service_token_secret,
            media_url_secret=media_url_secret,
        )


def test_settings_allow_dev_secret_in_development():
    assert ServiceSettings(environment="development").jwt_secret == DEV_JWT_SECRET


def test_token_roundtrip_and_roles():
    user = decode_user_token(mint_user_token(SECRET, "u1", "a@b.c", "admin"), SECRET)
    assert (user.id, user.email, user.is_admin) == ("u1", "a@b.c", True)


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode({"userId": "u", "exp": 1}, SECRET, algorithm="HS256"),  # expired
        jwt.encode({"userId": "u"}, SECRET, algorithm="HS256"),  # no exp
        jwt.encode({"userId": 5, "exp": 9999999999}, SECRET, algorithm="HS256"),  # id not a string
        jwt.encode({"userId": "u", "exp": 9999999999}, None, algorithm="none"),  # type: ignore[arg-type]
    ],
)
def test_bad_user_tokens(token):
    with pytest.raises(InvalidToken):
        decode_user_token(token, SECRET)


@pytest.mark.parametrize(
    "user_id",
    ["", "u" * 129, "a\x00b", "line\nbreak", "tab\there", "\x7f", "\u2028"],
    ids=["empty", "129-chars", "nul", "newline", "tab", "del", "line-separator"],
)
def test_validly_signed_tokens_with_unusable_user_ids_are_invalid(user_id):
    # A user id goes into every table, key and log line: 1-128 printable characters, else 401, never a 500.
    token = jwt.encode({"userId": user_id, "exp": 9999999999}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken) as raised:
        decode_user_token(token, SECRET)
    assert raised.value.headers == {"WWW-Authenticate": "Bearer"}


@pytest.mark.parametrize("user_id", ["u" * 128, "ünïcødé user", "auth0|abc-123", "a b"])
def test_printable_user_ids_up_to_128_characters_are_accepted(user_id):
    token = jwt.encode({"userId": user_id, "exp": 9999999999}, SECRET, algorithm="HS256")
    assert decode_user_token(token, SECRET).id == user_id


def test_service_token_is_not_a_user_token():
    service_token = ServiceTokens("t" * 40, "avatars").token()
    with pytest.raises(InvalidToken):
        decode_user_token(service_token, SECRET)


def test_ids_are_unique_and_time_ordered():
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids) and all(len(i) == 26 for i in ids)
    assert [i[:10] for i in ids] == sorted(i[:10] for i in ids)


def test_iso_utc_has_millis_and_z():
    wib = timezone(timedelta(hours=7))
    assert iso_utc(datetime(2025, 10, 13, 8, 30, 0, 123456, tzinfo=wib)) == "2025-10-13T01:30:00.123Z"
    assert iso_utc(datetime(2025, 10, 13, 1, 30, tzinfo=UTC)) == "2025-10-13T01:30:00.000Z"


class Body(RequestModel):
    name: Annotated[CleanStr, StringConstraints(min_length=1, max_length=5)]
    gender: Literal["male", "female", "unisex"] | None = None
    count: int | None = None


def issues(payload: object) -> list[dict]:
    try:
        Body.model_validate(payload)
    except ValidationError as exc:
        return zod_issues(exc.errors())
    return []


def test_zod_shapes():
    assert issues({"name": "ok", "gender": "robot"}) == [
        {
            "code": "invalid_enum_value",
            "received": "robot",
            "options": ["male", "female", "unisex"],
            "path": ["gender"],
            "message": "Invalid enum value. Expected 'male' | 'female' | 'unisex', received 'robot'",
        }
    ]
    assert issues({}) == [
        {"code": "invalid_type", "expected": "string", "received": "undefined", "path": ["name"], "message": "Required"}
    ]
    assert issues({"name": "toolong"})[0]["code"] == "too_big"
    assert issues({"name": "ok", "count": 1.5})[0] == {
        "code": "invalid_type",
        "expected": "integer",
        "received": "float",
        "path": ["count"],
        "message": "Expected integer, received float",
    }
    assert issues({"name": "ok", "a": 1, "b": 2})[-1]["keys"] == ["a", "b"]


def test_null_optional_is_absent():
    assert Body.model_validate({"name": "ok", "gender": None}).gender is None


class Wrapper(BaseModel):
    inner: Body


def test_nested_paths():
    with pytest.raises(ValidationError) as refused:
        Wrapper.model_validate({"inner": {"name": ""}})
    assert zod_issues(refused.value.errors())[0]["path"] == ["inner", "name"]
