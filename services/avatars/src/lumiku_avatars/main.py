from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import FastAPI

from lumiku_avatars import images
from lumiku_avatars.endpoints import internal, router
from lumiku_avatars.handlers import project_handlers, usage_handlers
from lumiku_avatars.objects import ObjectJanitor
from lumiku_avatars.settings import AvatarsSettings
from lumiku_avatars.workflows import AvatarWorkflows
from lumiku_common.auth import ServiceTokens
from lumiku_common.clients.credits import CreditsClient
from lumiku_common.clients.projects import ProjectsClient
from lumiku_common.internal import InternalClient
from lumiku_common.media import MediaSigner, MediaUrls
from lumiku_common.service import ServiceSpec, create_service, database_for
from lumiku_common.storage import storage_from


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
            on_startup=[startup],
            on_shutdown=[shutdown],
            title="Lumiku avatars",
            parts=[workflows, media, janitor],
        )
    )
