from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_projects.models import Project


class ProjectRepository:
    def __init__(self, session: AsyncSession):
        self.session = session

    async def get(self, user_id: str, project_id: str) -> Project | None:
        result = await self.session.execute(select(Project).where(Project.id == project_id, Project.user_id == user_id))
        return result.scalar_one_or_none()

    async def list(self, user_id: str, offset: int, limit: int) -> tuple[list[Project], int]:
        rows = await self.session.execute(
            select(Project)
            .where(Project.user_id == user_id)
            .order_by(Project.created_at.desc(), Project.id.desc())
            .offset(offset)
            .limit(limit)
        )
        total = await self.session.scalar(select(func.count()).where(Project.user_id == user_id))
        return list(rows.scalars()), int(total or 0)

    async def add(self, project: Project) -> Project:
        self.session.add(project)
        await self.session.flush()
        return project

    async def delete(self, project: Project) -> None:
        await self.session.execute(delete(Project).where(Project.id == project.id))
