from pydantic import Field

from lumiku_common.settings import ServiceSettings, StorageSettings


class GatewaySettings(ServiceSettings, StorageSettings):  # storage: the /media route streams images
    service_name: str = "gateway"
    gateway_port: int = 8080
    # Above what avatars takes (16 MiB), so an oversized upload gets avatars' own answer; bodies this large
    # stream through the gateway without being held.
    max_request_body_bytes: int = 64 * 1024 * 1024
    # AI generation answers slowly: above generation's GENERATION_SYNC_WAIT_S (120), so its 202 arrives first.
    upstream_timeout: float = 150.0
    upstream_connect_timeout: float = 3.0
    # Only services listed here are routed; a path owned by a service that is not deployed answers 404.
    service_urls: dict[str, str] = Field(
        default_factory=lambda: {
            "projects": "http://127.0.0.1:8101",
            "avatars": "http://127.0.0.1:8102",
            "generation": "http://127.0.0.1:8103",
            "credits": "http://127.0.0.1:8104",
            "usage": "http://127.0.0.1:8105",
        }
    )

    # Browser origins allowed to call the API (with credentials), e.g. '["https://app.lumiku.com"]'; none by
    # default, so a browser on any other site can read nothing. Exact matches: scheme, host and port.
    cors_origins: list[str] = Field(default_factory=list)

    # Project responses embed their newest avatars (the spec's performance section limits the list view).
    avatars_per_project_in_list: int = 10
    avatars_per_project_in_detail: int = 100

    # Per-user request limits (spec §13.4), counted in Redis so every gateway replica shares them.
    rate_limit_enabled: bool = True
    rate_limits: dict[str, str] = Field(
        default_factory=lambda: {
            "api": "100/60",  # any request, per minute
            "create-project": "10/3600",
            "upload-avatar": "50/3600",
            "generate-avatar": "20/3600",
        }
    )
