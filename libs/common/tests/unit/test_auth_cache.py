"""Verified user and service tokens are remembered until they expire; never across secrets, never past `exp`,
never one kind for the other."""

import time

import jwt
import pytest

from lumiku_common.auth import (
    SERVICE_AUDIENCE,
    InvalidToken,
    ServiceTokens,
    decode_service_token,
    decode_user_token,
    mint_user_token,
)


def test_a_remembered_token_is_still_refused_under_another_secret():
    token = mint_user_token("secret-a", "cache-user")
    assert decode_user_token(token, "secret-a").id == "cache-user"
    with pytest.raises(InvalidToken):
        decode_user_token(token, "secret-b")
    assert decode_user_token(token, "secret-a").id == "cache-user"


def test_a_remembered_token_is_refused_once_it_expires():
    expires = int(time.time()) + 2
    token = jwt.encode({"userId": "short-lived", "exp": expires}, "secret-a", algorithm="HS256")
    assert decode_user_token(token, "secret-a").id == "short-lived"
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    with pytest.raises(InvalidToken):
        decode_user_token(token, "secret-a")


def test_a_remembered_service_token_is_still_refused_under_another_secret():
    token = ServiceTokens("secret-a", "gateway").token()
    assert decode_service_token(token, "secret-a") == "gateway"
    with pytest.raises(InvalidToken):
        decode_service_token(token, "secret-b")
    assert decode_service_token(token, "secret-a") == "gateway"


def test_a_remembered_service_token_is_refused_once_it_expires():
    expires = int(time.time()) + 2
    claims = {"iss": "avatars", "aud": SERVICE_AUDIENCE, "iat": int(time.time()), "exp": expires}
    token = jwt.encode(claims, "secret-a", algorithm="HS256")
    assert decode_service_token(token, "secret-a") == "avatars"
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    with pytest.raises(InvalidToken):
        decode_service_token(token, "secret-a")


def test_a_remembered_user_token_is_no_service_token_even_under_the_same_secret():
    token = mint_user_token("shared-secret", "cache-user")
    assert decode_user_token(token, "shared-secret").id == "cache-user"
    with pytest.raises(InvalidToken):
        decode_service_token(token, "shared-secret")
