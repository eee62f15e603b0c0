from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import FastAPI

from lumiku_avatars import images
from lumiku_avatars.endpoints import internal, router
from lumiku_avatars.handlers import project_handlers, usage_handlers
from lumiku_avatars.objects import ObjectJanitor
from lumiku_avatars.settings import AvatarsSettings
from lumiku_avatars.uploads import Uploads
from lumiku_common.auth import ServiceTokens
from lumiku_common.clients.credits import CreditsClient
from lumiku_common.clients.projects import ProjectsClient
from lumiku_common.internal import InternalClient
from lumiku_common.media import MediaSigner, MediaUrls
from lumiku_common.service import ServiceSpec, create_service
from lumiku_common.storage import storage_from


def create_app(
    settings: AvatarsSettings | None = None, transports: dict[str, httpx.AsyncBaseTransport] | None = None
) -> FastAPI:
    """`transports` lets tests wire the projects and credits services in-process."""
    settings = settings or AvatarsSettings()
    transports = transports or {}
    janitor = ObjectJanitor(settings)

    def client(name: str) -> InternalClient:
        tokens = ServiceTokens(settings.service_token_secret, settings.service_name)
        return InternalClient(settings.service_urls[name], tokens, transport=transports.get(name))

    async def startup(app: FastAPI) -> None:
        images.configure(settings.max_image_pixels)
        storage = storage_from(settings)
        await storage.ensure_ready()
        janitor.bind(app.state.db, storage)
        app.state.janitor = janitor
        app.state.media = MediaUrls(storage, MediaSigner(settings.media_url_secret, settings.media_url_ttl_seconds))
        app.state.uploads = Uploads(
            settings, app.state.db, storage, ProjectsClient(client("projects")), CreditsClient(client("credits"))
        )

    async def shutdown(app: FastAPI) -> None:
        uploads: Uploads = app.state.uploads
        await uploads.projects.client.aclose()
        await uploads.credits.client.aclose()
        await uploads.storage.close()

    return create_service(
        ServiceSpec(
            settings=settings,
            routers=[router, internal],
            migrations=Path(__file__).parent / "migrations",
            consumers={"avatars.project-events": project_handlers(janitor), "avatars.usage-events": usage_handlers()},
            background=[janitor.run],
            on_startup=[startup],
            on_shutdown=[shutdown],
            title="Lumiku avatars",
        )
    )
