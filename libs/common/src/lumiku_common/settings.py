"""Settings shared by every service; each service subclasses `ServiceSettings`.

Secrets have development defaults so `make dev` works from a fresh clone, and the settings refuse to load
with those defaults anywhere but `ENVIRONMENT=development`/`test`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "dev-only-jwt-secret-change-me-0123456789"
DEV_SERVICE_SECRET = "dev-only-service-secret-change-me-0123456789"
DEV_MEDIA_SECRET = "dev-only-media-secret-change-me-0123456789"
_DEV_SECRETS = {DEV_JWT_SECRET, DEV_SERVICE_SECRET, DEV_MEDIA_SECRET}
MIN_SECRET_LENGTH = 32

Environment = Literal["development", "test", "staging", "production"]


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    service_name: str = "service"
    environment: Environment = "development"
    version: str = "1.0.0"
    log_level: str = "INFO"

    jwt_secret: str = DEV_JWT_SECRET
    service_token_secret: str = DEV_SERVICE_SECRET
    # Signs the expiring image URLs the gateway serves (see lumiku_common.media).
    media_url_secret: str = DEV_MEDIA_SECRET
    media_url_ttl_seconds: int = 3600

    # One database per service: `database_name` is appended to `postgres_url`'s server.
    postgres_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432"
    database_name: str = ""
    db_pool_size: int = 10

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    events_exchange: str = "lumiku.events"
    # Prefixes queue names so that test runs never share queues with `make dev`.
    queue_prefix: str = ""
    consumer_prefetch: int = 16
    consumer_delivery_limit: int = 5
    outbox_poll_seconds: float = 0.5
    outbox_batch_size: int = 100
    # After a cycle that published, the relay lets the commits of this long join its next batch: under a stream
    # of writes it is a cycle (a transaction and a broker round trip) for several rows instead of one per row.
    outbox_linger_seconds: float = 0.005
    # Published outbox rows and handled inbox ids are kept this long, then pruned.
    outbox_retention_hours: float = 24
    inbox_retention_days: float = 14
    # A client's Idempotency-Key is answered from its record this long; a retry after that runs again.
    idempotency_key_retention_days: float = Field(7, ge=1)  # far past a claim's takeover (a minute)
    # A request body over this is 413 before it is read (the avatars service and the gateway take uploads).
    max_request_body_bytes: int = Field(1024 * 1024, ge=1024)
    prune_interval_seconds: float = 600
    # NOTIFY at commit wakes relays in other processes at once, but PostgreSQL serialises notifying commits
    # cluster-wide. Unset: notify only when this process runs no relay of its own (RUN_WORKERS=false).
    outbox_notify: bool | None = None
    # The API process also runs the outbox relay and consumers unless a separate worker does.
    run_workers: bool = True
    # Graceful shutdown. On SIGTERM /ready answers 503 at once and the server keeps serving this long (load
    # balancers stop sending) before it stops accepting and drains in-flight requests.
    shutdown_drain_seconds: float = 0.0
    # Messages being handled on SIGTERM get this long to finish; unfinished ones go back to their queue.
    consumer_drain_seconds: float = 10.0
    # Prometheus: a separate port for prometheus_client's server (standalone workers, the gateway); services'
    # own apps also answer /metrics. Gauges read from the database and broker refresh this often.
    metrics_port: int | None = None
    metrics_refresh_seconds: float = 15

    redis_url: str = "redis://127.0.0.1:6379/0"
    service_urls: dict[str, str] = Field(
        default_factory=lambda: {
            "projects": "http://127.0.0.1:8101",
            "avatars": "http://127.0.0.1:8102",
            "generation": "http://127.0.0.1:8103",
            "credits": "http://127.0.0.1:8104",
            "usage": "http://127.0.0.1:8105",
        }
    )

    @property
    def database_url(self) -> str:
        return f"{self.postgres_url.rstrip('/')}/{self.database_name or self.service_name}"

    @property
    def notifies_outbox(self) -> bool:
        return not self.run_workers if self.outbox_notify is None else self.outbox_notify

    @property
    def is_development(self) -> bool:
        return self.environment in ("development", "test")

    @model_validator(mode="after")
    def _refuse_insecure_secrets(self) -> ServiceSettings:
        if self.is_development:
            return self
        for name in ("jwt_secret", "service_token_secret", "media_url_secret"):
            value = getattr(self, name)
            if value in _DEV_SECRETS or len(value) < MIN_SECRET_LENGTH:
                raise ValueError(
                    f"{name.upper()} must be set to a secret of at least {MIN_SECRET_LENGTH} characters "
                    f"outside development (ENVIRONMENT={self.environment})"
                )
        if len({self.jwt_secret, self.service_token_secret, self.media_url_secret}) < 3:
            # One secret for two purposes: a user's token would pass as a service's, or sign media URLs.
            raise ValueError("JWT_SECRET, SERVICE_TOKEN_SECRET and MEDIA_URL_SECRET must differ outside development")
        return self


class StorageSettings(BaseSettings):
    """Where image objects live; mixed into the settings of every service that reads or writes them."""

    storage_backend: Literal["filesystem", "s3"] = "filesystem"
    storage_path: str = "./.data/objects"
    s3_endpoint_url: str | None = None  # None: AWS itself
    # Set when browsers can reach S3 directly: media URLs are then presigned S3 URLs instead of gateway URLs.
    s3_public_endpoint_url: str | None = None
    s3_bucket: str = "lumiku-avatars"
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_create_bucket: bool = False  # development and tests: create the bucket at start-up
