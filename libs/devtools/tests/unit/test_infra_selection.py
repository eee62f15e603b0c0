"""Where the tests' servers come from: every combination of environment URL, local development server and
Docker engine, for each server."""

from __future__ import annotations

import pytest

from lumiku_devtools.infra_selection import SERVERS, Choice, Server, select, skip_reason

URLS = {
    "POSTGRES_URL": "postgresql+asyncpg://u:p@db.example:5432",
    "AMQP_URL": "amqp://u:p@mq.example:5672/",
    "REDIS_URL": "redis://cache.example:6379/0",
    "TEST_S3_ENDPOINT_URL": "http://s3.example:9000",
}


def local(*answering: str):  # type: ignore[no-untyped-def]
    return lambda server: server.env_var in answering


def docker(answers: bool):  # type: ignore[no-untyped-def]
    calls: list[int] = []

    def ping() -> bool:
        calls.append(1)
        return answers

    ping.calls = calls  # type: ignore[attr-defined]
    return ping


def sources(choices: list[Choice]) -> dict[str, str]:
    return {c.server.env_var: c.source for c in choices}


@pytest.mark.parametrize("docker_up", [True, False])
def test_urls_in_the_environment_are_used_as_given_and_docker_is_not_asked(docker_up: bool) -> None:
    ping = docker(docker_up)
    choices = select(URLS, local(*URLS), ping)
    assert set(sources(choices).values()) == {"env"}
    assert ping.calls == []  # type: ignore[attr-defined]
    assert skip_reason(choices) is None
    assert all(c.reason == f"{c.server.env_var} is set" for c in choices)


def test_an_empty_url_counts_as_not_given() -> None:
    choices = select({**URLS, "REDIS_URL": ""}, local(), docker(False))
    assert sources(choices)["REDIS_URL"] == "unavailable"


def test_local_development_servers_are_used_when_no_url_is_given() -> None:
    ping = docker(True)
    choices = select({}, local("POSTGRES_URL", "AMQP_URL", "REDIS_URL"), ping)
    assert sources(choices) == {
        "POSTGRES_URL": "local",
        "AMQP_URL": "local",
        "REDIS_URL": "local",
        "TEST_S3_ENDPOINT_URL": "container",  # S3 has no local default: MinIO when Docker answers
    }
    assert "127.0.0.1:5432" in choices[0].reason
    assert ping.calls == [1]  # type: ignore[attr-defined]


def test_with_nothing_given_and_docker_every_server_is_a_container() -> None:
    ping = docker(True)
    choices = select({}, local(), ping)
    assert set(sources(choices).values()) == {"container"}
    assert ping.calls == [1]  # type: ignore[attr-defined]  # asked once, not per server
    assert skip_reason(choices) is None
    assert {c.reason.rsplit(" a ", 1)[1] for c in choices} == {f"{s.image} container" for s in SERVERS}


def test_with_nothing_given_and_no_docker_the_servers_are_unavailable_and_say_why() -> None:
    choices = select({}, local(), docker(False))
    assert sources(choices) == {
        "POSTGRES_URL": "unavailable",
        "AMQP_URL": "unavailable",
        "REDIS_URL": "unavailable",
        "TEST_S3_ENDPOINT_URL": "builtin",  # the in-process S3 server: never missing
    }
    reason = skip_reason(choices)
    assert reason is not None
    for name, var, port in (
        ("PostgreSQL", "POSTGRES_URL", 5432),
        ("RabbitMQ", "AMQP_URL", 5672),
        ("Redis", "REDIS_URL", 6379),
    ):
        assert f"{name}: no {var}, nothing answers on 127.0.0.1:{port} and no Docker engine answers" in reason
    assert "S3" not in reason


@pytest.mark.parametrize("server", [s for s in SERVERS if s.local is not None], ids=lambda s: s.name)
def test_one_missing_server_is_the_only_one_named(server: Server) -> None:
    env = {k: v for k, v in URLS.items() if k != server.env_var}
    choices = select(env, local(), docker(False))
    assert [c.server for c in choices if not c.usable] == [server]
    reason = skip_reason(choices)
    assert reason is not None and reason.startswith(f"{server.name}: no {server.env_var}")


def test_mixed_sources_each_server_on_its_own() -> None:
    choices = select({"POSTGRES_URL": URLS["POSTGRES_URL"]}, local("AMQP_URL"), docker(True))
    assert sources(choices) == {
        "POSTGRES_URL": "env",
        "AMQP_URL": "local",
        "REDIS_URL": "container",
        "TEST_S3_ENDPOINT_URL": "container",
    }
