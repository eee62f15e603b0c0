"""Where the tests' PostgreSQL, RabbitMQ, Redis and S3 come from, so a contributor with Docker needs nothing
else: for each server, in order,

1. its URL in the environment (POSTGRES_URL, AMQP_URL, REDIS_URL, TEST_S3_ENDPOINT_URL): used as given;
2. the development default answering on this machine (127.0.0.1:5432, :5672, :6379), as `make infra` runs them;
3. a Docker engine that answers: a throwaway container (testcontainers), MinIO for S3;
4. otherwise PostgreSQL/RabbitMQ/Redis are unavailable and the server tests are skipped saying why; S3 falls
   back to the in-process S3 server the tests have always had (moto), so it is never missing.

`select` is the decision alone (pure, unit-tested); `probe` looks at the machine; `start_containers` runs the
containers and exports their URLs (so services the tests start as processes see them too).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

Source = Literal["env", "local", "container", "builtin", "unavailable"]


@dataclass(frozen=True)
class Server:
    name: str
    env_var: str
    local: tuple[str, int] | None  # the development default's address; None: there is none
    image: str


SERVERS = (
    Server("PostgreSQL", "POSTGRES_URL", ("127.0.0.1", 5432), "postgres:16"),
    Server("RabbitMQ", "AMQP_URL", ("127.0.0.1", 5672), "rabbitmq:3.13"),
    Server("Redis", "REDIS_URL", ("127.0.0.1", 6379), "redis:7"),
    Server("S3", "TEST_S3_ENDPOINT_URL", None, "minio/minio:RELEASE.2024-12-18T13-15-44Z"),
)
S3_KEYS = ("TEST_S3_ACCESS_KEY_ID", "TEST_S3_SECRET_ACCESS_KEY")
DEFAULT_S3_KEYS = ("testing", "testing-secret")  # moto accepts any; MinIO wants a secret of 8+ characters


@dataclass(frozen=True)
class Choice:
    server: Server
    source: Source
    reason: str

    @property
    def usable(self) -> bool:
        return self.source != "unavailable"


def select(
    env: Mapping[str, str], local_answers: Callable[[Server], bool], docker_answers: Callable[[], bool]
) -> list[Choice]:
    """One choice per server, with the reason a person reads when tests skip or start containers. Docker is
    asked (once) only if some server is neither in the environment nor local."""
    docker = functools.cache(docker_answers)
    return [_choose(server, env, local_answers, docker) for server in SERVERS]


def _choose(
    server: Server, env: Mapping[str, str], local_answers: Callable[[Server], bool], docker: Callable[[], bool]
) -> Choice:
    if env.get(server.env_var):
        return Choice(server, "env", f"{server.env_var} is set")
    if server.local is not None and local_answers(server):
        host, port = server.local
        return Choice(server, "local", f"no {server.env_var}; the development default answers on {host}:{port}")
    if docker():
        return Choice(server, "container", f"no {server.env_var} and nothing local: a {server.image} container")
    if server.local is None:
        return Choice(server, "builtin", f"no {server.env_var} and no Docker engine: the in-process S3 server (moto)")
    host, port = server.local
    return Choice(
        server,
        "unavailable",
        f"{server.name}: no {server.env_var}, nothing answers on {host}:{port} and no Docker engine answers "
        f"(set {server.env_var}, run `make infra`, or start Docker)",
    )


def skip_reason(choices: list[Choice]) -> str | None:
    """Why the server tests cannot run here, or None if they can."""
    missing = [c.reason for c in choices if not c.usable]
    return "; ".join(missing) or None


# --- the machine -------------------------------------------------------------------------------------------


def probe() -> list[Choice]:
    return select(os.environ, _local_answers, docker_answers)


def _local_answers(server: Server) -> bool:
    assert server.local is not None
    with contextlib.suppress(OSError), socket.create_connection(server.local, timeout=0.5):
        return True
    return False


def docker_answers() -> bool:
    """True when a Docker engine answers a ping (DOCKER_HOST or the default socket), within 2 seconds."""
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, no permission, no answer: all mean "no engine here"
        return False


@contextlib.contextmanager
def start_containers(choices: list[Choice]) -> Iterator[dict[str, str]]:
    """Starts a container for each choice that asks for one and yields the environment that points at them
    (also set in os.environ while they run)."""
    wanted = {c.server.env_var for c in choices if c.source == "container"}
    with contextlib.ExitStack() as stack:
        env: dict[str, str] = {}
        for server in SERVERS:
            if server.env_var in wanted:
                env.update(_STARTERS[server.env_var](stack, server))
        previous = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield env
        finally:
            for key, value in previous.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _postgres(stack: contextlib.ExitStack, server: Server) -> dict[str, str]:
    from testcontainers.postgres import PostgresContainer

    c = stack.enter_context(PostgresContainer(server.image, username="lumiku", password="lumiku", dbname="postgres"))
    return {
        server.env_var: f"postgresql+asyncpg://lumiku:lumiku@{c.get_container_host_ip()}:{c.get_exposed_port(5432)}"
    }


def _rabbitmq(stack: contextlib.ExitStack, server: Server) -> dict[str, str]:
    from testcontainers.rabbitmq import RabbitMqContainer

    c = stack.enter_context(RabbitMqContainer(server.image, username="lumiku", password="lumiku"))
    return {server.env_var: f"amqp://lumiku:lumiku@{c.get_container_host_ip()}:{c.get_exposed_port(5672)}/"}


def _redis(stack: contextlib.ExitStack, server: Server) -> dict[str, str]:
    from testcontainers.redis import RedisContainer

    c = stack.enter_context(RedisContainer(server.image))
    return {server.env_var: f"redis://{c.get_container_host_ip()}:{c.get_exposed_port(6379)}/0"}


def _minio(stack: contextlib.ExitStack, server: Server) -> dict[str, str]:
    from testcontainers.community.minio import MinioContainer

    key, secret = DEFAULT_S3_KEYS
    c = stack.enter_context(MinioContainer(server.image, access_key=key, secret_key=secret))
    endpoint = f"http://{c.get_container_host_ip()}:{c.get_exposed_port(9000)}"
    return {server.env_var: endpoint, S3_KEYS[0]: key, S3_KEYS[1]: secret}


_STARTERS: dict[str, Callable[[contextlib.ExitStack, Server], dict[str, str]]] = {
    "POSTGRES_URL": _postgres,
    "AMQP_URL": _rabbitmq,
    "REDIS_URL": _redis,
    "TEST_S3_ENDPOINT_URL": _minio,
}


def s3_keys() -> tuple[str, str]:
    """The access key and secret of the tests' S3 (any for moto; MinIO's or the environment's otherwise)."""
    return os.environ.get(S3_KEYS[0], DEFAULT_S3_KEYS[0]), os.environ.get(S3_KEYS[1], DEFAULT_S3_KEYS[1])
