from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
from fastapi import FastAPI

from lumiku_avatars import images
from lumiku_avatars.endpoints import internal, router
from lumiku_avatars.form import too_large
from lumiku_avatars.handlers import project_handlers, usage_handlers
from lumiku_avatars.models import DeletedGeneratedAvatar, DeletedProject, GivenUpImage, idempotency_keys
from lumiku_avatars.objects import ObjectJanitor
from lumiku_avatars.settings import AvatarsSettings
from lumiku_avatars.workflows import AvatarWorkflows
from lumiku_common.auth import ServiceTokens
from lumiku_common.clients.credits import CreditsClient
from lumiku_common.clients.projects import ProjectsClient
from lumiku_common.idempotency import key_retention
from lumiku_common.internal import InternalClient
from lumiku_common.media import MediaSigner, MediaUrls
from lumiku_common.retention import Retention
from lumiku_common.service import ServiceSpec, create_service, database_for
from lumiku_common.storage import storage_from


def retained(settings: AvatarsSettings) -> list[Retention]:
    """Idempotency keys, and the tombstones that answer a creation still in flight: kept far longer than any
    credit hold such a creation could still capture can live (credits' CREDITS_MAX_HOLD_TTL_SECONDS)."""
    tombstones = timedelta(days=settings.tombstone_retention_days)
    return [
        key_retention(idempotency_keys, settings),
        Retention.of_model(GivenUpImage, "given_up_at", tombstones),
        Retention.of_model(DeletedProject, "deleted_at", tombstones),
        Retention.of_model(DeletedGeneratedAvatar, "deleted_at", tombstones),
    ]


def create_app(
    settings: AvatarsSettings | None = None, transports: dict[str, httpx.AsyncBaseTransport] | None = None
) -> FastAPI:
    """`transports` lets tests wire the projects and credits services in-process."""
    settings = settings or AvatarsSettings()
    transports = transports or {}
    tokens = ServiceTokens(settings.service_token_secret, settings.service_name)

    def client(name: str) -> InternalClient:
        return InternalClient(settings.service_urls[name], tokens, transport=transports.get(name))

    db, storage = database_for(settings), storage_from(settings)
    workflows = AvatarWorkflows(
        settings, db, storage, ProjectsClient(client("projects")), CreditsClient(client("credits"))
    )
    janitor = ObjectJanitor(settings, db, storage)
    media = MediaUrls(storage, MediaSigner(settings.media_url_secret, settings.media_url_ttl_seconds))

    async def startup(_: FastAPI) -> None:
        images.configure(settings.max_image_pixels)
        await storage.ensure_ready()

    async def shutdown(_: FastAPI) -> None:
        await workflows.projects.aclose()
        await workflows.credits.aclose()
        await storage.close()

    return create_service(
        ServiceSpec(
            settings=settings,
            routers=[router, internal],
            db=db,
            migrations=Path(__file__).parent / "migrations",
            consumers={"avatars.project-events": project_handlers(janitor), "avatars.usage-events": usage_handlers()},
            background=[janitor.purge_loop, janitor.sweep_loop],
            retained=retained(settings),
            body_too_large=too_large(settings.max_upload_bytes).message,  # only an image comes so large
            on_startup=[startup],
            on_shutdown=[shutdown],
            title="Lumiku avatars",
            parts=[workflows, media, janitor],
        )
    )
