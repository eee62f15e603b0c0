from __future__ import annotations

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from lumiku_projects.models import Project
from lumiku_projects.schemas import ProjectOut

_OUT = (Project.id, Project.user_id, Project.name, Project.description, Project.created_at, Project.updated_at)


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


class ProjectReads:
    """Hot reads straight into the response model: Core rows, no ORM objects built only to be serialised."""

    def __init__(self, conn: AsyncConnection):
        self.conn = conn

    async def get(self, user_id: str, project_id: str) -> ProjectOut | None:
        result = await self.conn.execute(select(*_OUT).where(Project.id == project_id, Project.user_id == user_id))
        row = result.first()
        return ProjectOut.model_validate(row._asdict()) if row is not None else None

    async def list(self, user_id: str, offset: int, limit: int) -> tuple[list[ProjectOut], int]:
        """One page and the total in one round trip (the total rides on each row); a page past the end counts
        on its own."""
        owned: ColumnElement[bool] = Project.user_id == user_id
        total = func.count().over().label("total")
        query = select(*_OUT, total).where(owned).order_by(Project.created_at.desc(), Project.id.desc())
        rows = (await self.conn.execute(query.offset(offset).limit(limit))).all()
        if rows:
            return [ProjectOut.model_validate(row._asdict()) for row in rows], int(rows[0].total)
        if offset == 0:
            return [], 0
        return [], int(await self.conn.scalar(select(func.count()).where(owned)) or 0)
