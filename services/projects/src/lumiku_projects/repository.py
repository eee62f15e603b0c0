from __future__ import annotations

from typing import Any, cast

from pydantic import TypeAdapter
from sqlalchemy import Boolean, ColumnElement, String, Table, bindparam, case, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common.db import Database, DriverWork, Query, utcnow
from lumiku_projects.models import Project
from lumiku_projects.schemas import ProjectOut

_OUT = (Project.id, Project.user_id, Project.name, Project.description, Project.created_at, Project.updated_at)
_OWNED: ColumnElement[bool] = Project.user_id == bindparam("user_id")
_ONE_OWNED = select(*_OUT).where(Project.id == bindparam("project_id"), _OWNED)

# A partial update in one statement, only when it changes something: an absent name (NULL) keeps the name, the
# description is set only when `set_description` (NULL clears it). (Bound names of an UPDATE cannot be column
# names.)
_NEW_NAME = func.coalesce(bindparam("new_name", type_=String), Project.name)
_NEW_DESCRIPTION = case(
    (bindparam("set_description", type_=Boolean), bindparam("new_description", type_=String)),
    else_=Project.description,
)
_UPDATE = (
    update(cast(Table, Project.__table__))
    .where(
        Project.id == bindparam("the_project"),
        Project.user_id == bindparam("owner"),
        or_(Project.name.is_distinct_from(_NEW_NAME), Project.description.is_distinct_from(_NEW_DESCRIPTION)),
    )
    .values(name=_NEW_NAME, description=_NEW_DESCRIPTION, updated_at=bindparam("changed_at"))
    .returning(*_OUT)
)


class ProjectRepository:
    def __init__(self, session: AsyncSession):
        self.session = session

    async def get(self, user_id: str, project_id: str) -> Project | None:
        result = await self.session.execute(select(Project).where(Project.id == project_id, Project.user_id == user_id))
        return result.scalar_one_or_none()

    async def add(self, project: Project) -> Project:
        self.session.add(project)
        await self.session.flush()
        return project

    async def delete(self, project: Project) -> None:
        await self.session.execute(delete(Project).where(Project.id == project.id))


_ONE = Query(_ONE_OWNED)
_CHANGE = Query(_UPDATE)
# One page and the total in one round trip (the total rides on each row).
_PAGE = Query(
    select(*_OUT, func.count().over().label("total"))
    .where(_OWNED)
    .order_by(Project.created_at.desc(), Project.id.desc())
    .offset(bindparam("offset"))
    .limit(bindparam("limit"))
)
_COUNT = Query(select(func.count()).where(_OWNED))


_PROJECTS = TypeAdapter(list[ProjectOut])  # one call into pydantic-core for the page, not one per row


class ProjectReads:
    """Hot reads straight into the response model: compiled once, run on asyncpg, no ORM objects."""

    def __init__(self, db: Database):
        self.db = db

    async def get(self, user_id: str, project_id: str) -> ProjectOut | None:
        row = await self.db.fetchrow(_ONE, user_id=user_id, project_id=project_id)
        return ProjectOut.model_validate(dict(row)) if row is not None else None

    async def list(self, user_id: str, offset: int, limit: int) -> tuple[list[ProjectOut], int]:
        """A page past the end counts on its own."""
        rows = await self.db.fetch(_PAGE, user_id=user_id, offset=offset, limit=limit)
        if rows:
            return _PROJECTS.validate_python([dict(row) for row in rows]), int(rows[0]["total"])
        if offset == 0:
            return [], 0
        row = await self.db.fetchrow(_COUNT, user_id=user_id)
        return [], int(row[0]) if row is not None else 0


class ProjectWrites:
    """The hot write, a project's partial update, in a unit of work on the driver connection."""

    def __init__(self, work: DriverWork):
        self.work = work

    async def update(self, user_id: str, project_id: str, changes: dict[str, Any]) -> ProjectOut | None:
        """The project after `changes` (`description: None` clears it); None when they change nothing, or when
        the caller has no such project."""
        row = await self.work.fetchrow(
            _CHANGE,
            the_project=project_id,
            owner=user_id,
            new_name=changes.get("name"),
            set_description="description" in changes,
            new_description=changes.get("description"),
            changed_at=utcnow(),
        )
        return ProjectOut.model_validate(dict(row)) if row is not None else None

    async def read(self, user_id: str, project_id: str) -> ProjectOut | None:
        """The project as it stands in this unit of work."""
        row = await self.work.fetchrow(_ONE, user_id=user_id, project_id=project_id)
        return ProjectOut.model_validate(dict(row)) if row is not None else None
