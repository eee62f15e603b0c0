"""Project use cases. No commits here: the request's unit of work commits the change and its events."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common.clients.projects import ProjectNotFound
from lumiku_common.db import Database, DriverWork
from lumiku_common.idempotency import Idempotency, Outcome, user_scoped
from lumiku_common.messaging.events import ProjectCreated, ProjectDeleted, ProjectUpdated
from lumiku_common.messaging.outbox import add_event
from lumiku_projects.models import Project, idempotency_keys
from lumiku_projects.repository import ProjectReads, ProjectRepository, ProjectWrites
from lumiku_projects.schemas import ProjectChangedResponse, ProjectCreate, ProjectOut, ProjectUpdate

_keys = Idempotency(idempotency_keys)


async def get_project(session: AsyncSession, user_id: str, project_id: str) -> Project:
    project = await ProjectRepository(session).get(user_id, project_id)
    if project is None:
        raise ProjectNotFound()
    return project


async def read_project(db: Database, user_id: str, project_id: str) -> ProjectOut:
    project = await ProjectReads(db).get(user_id, project_id)
    if project is None:
        raise ProjectNotFound()
    return project


async def list_projects(db: Database, user_id: str, offset: int, limit: int) -> tuple[list[ProjectOut], int]:
    return await ProjectReads(db).list(user_id, offset, limit)


async def create_project(session: AsyncSession, user_id: str, data: ProjectCreate, key: str | None = None) -> Outcome:
    """The created project's answer; with an `Idempotency-Key`, a retry replays the first answer."""

    async def create() -> ProjectChangedResponse:
        project = await ProjectRepository(session).add(
            Project(user_id=user_id, name=data.name, description=data.description or None)
        )
        await add_event(
            session,
            ProjectCreated(project_id=project.id, name=project.name, description=project.description),
            user_id=user_id,
            subject=project.id,
        )
        return ProjectChangedResponse(
            project=ProjectOut.model_validate(project), message="Project created successfully"
        )

    if key is None:
        return Outcome(201, (await create()).model_dump(mode="json"))
    request = data.model_dump(mode="json")
    return await _keys.once(
        session,
        key=user_scoped(user_id, key),
        operation="create-project",
        request=request,
        status_code=201,
        action=create,
    )


async def update_project(work: DriverWork, user_id: str, project_id: str, data: ProjectUpdate) -> ProjectOut:
    """One UPDATE that changes the row only if it differs ("" clears the description); no event otherwise."""
    changes = data.model_dump(exclude_none=True)
    if "description" in changes:
        changes["description"] = changes["description"] or None
    writes = ProjectWrites(work)
    project = await writes.update(user_id, project_id, changes)
    if project is None:  # nothing changed, or not the caller's project
        project = await writes.read(user_id, project_id)
        if project is None:
            raise ProjectNotFound()
        return project
    await add_event(
        work,
        ProjectUpdated(project_id=project.id, name=project.name, description=project.description),
        user_id=user_id,
        subject=project.id,
    )
    return project


async def delete_project(session: AsyncSession, user_id: str, project_id: str) -> None:
    """Deletes the project; `project.deleted` tells the avatars service to cascade."""
    project = await get_project(session, user_id, project_id)
    await ProjectRepository(session).delete(project)
    await add_event(session, ProjectDeleted(project_id=project.id), user_id=user_id, subject=project.id)
