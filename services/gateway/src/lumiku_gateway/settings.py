from lumiku_common.settings import ServiceSettings
from pydantic import Field


class GatewaySettings(ServiceSettings):
    service_name: str = "gateway"
    gateway_port: int = 8080
    upstream_timeout: float = 120.0  # AI generation answers slowly
    upstream_connect_timeout: float = 3.0
    # Only services listed here are routed; a path owned by a service that is not deployed answers 404.
    service_urls: dict[str, str] = Field(
        default_factory=lambda: {
            "projects": "http://127.0.0.1:8101",
            "credits": "http://127.0.0.1:8104",
        }
    )
