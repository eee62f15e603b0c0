"""Verified user tokens are remembered until they expire; never across secrets, never past `exp`."""

import time

import jwt
import pytest

from lumiku_common.auth import InvalidToken, decode_user_token, mint_user_token


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
