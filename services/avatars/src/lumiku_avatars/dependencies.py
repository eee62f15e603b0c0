"""What the avatars endpoints need, as typed dependencies (tests swap them with `dependency_overrides`).

The parts are built once by `create_app` and kept on the app; these providers are their only readers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from lumiku_avatars.objects import ObjectJanitor
from lumiku_avatars.workflows import AvatarWorkflows
from lumiku_common.media import MediaUrls


@dataclass(frozen=True)
class AvatarsParts:
    workflows: AvatarWorkflows
    media: MediaUrls
    janitor: ObjectJanitor


def _parts(request: Request) -> AvatarsParts:
    parts: AvatarsParts = request.app.state.avatars
    return parts


def _workflows(parts: Annotated[AvatarsParts, Depends(_parts)]) -> AvatarWorkflows:
    return parts.workflows


def _media(parts: Annotated[AvatarsParts, Depends(_parts)]) -> MediaUrls:
    return parts.media


def _janitor(parts: Annotated[AvatarsParts, Depends(_parts)]) -> ObjectJanitor:
    return parts.janitor


WorkflowsDep = Annotated[AvatarWorkflows, Depends(_workflows)]
MediaDep = Annotated[MediaUrls, Depends(_media)]
JanitorDep = Annotated[ObjectJanitor, Depends(_janitor)]
