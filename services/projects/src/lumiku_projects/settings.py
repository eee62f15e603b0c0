from lumiku_common.settings import ServiceSettings


class ProjectsSettings(ServiceSettings):
    service_name: str = "projects"
    database_name: str = "lumiku_projects"
