from typing import Literal

from pydantic import Field, model_validator

from lumiku_common.settings import ServiceSettings

ProviderName = Literal["auto", "huggingface", "placeholder"]


class GenerationSettings(ServiceSettings):
    service_name: str = "generation"
    database_name: str = "lumiku_generation"
    # Deleted projects are remembered this long: their jobs still settling are deleted once settled (within the
    # jobs' deadlines, far shorter).
    tombstone_retention_days: float = Field(14, ge=1)

    # The AI provider (spec §4.1). "auto": Hugging Face when a token is set, else (development only) the local
    # placeholder that draws an image from the prompt and seed, so `make dev` works offline.
    generation_provider: ProviderName = "auto"
    huggingface_token: str | None = None
    huggingface_inference_url: str = "https://router.huggingface.co/hf-inference/models"
    # FLUX.1-dev is licensed for non-commercial use only: a deployment picks its model here.
    generation_model: str = "black-forest-labs/FLUX.1-dev"
    # An adapter of GENERATION_MODEL (e.g. XLabs-AI/flux-RealismLora), called under its own id at its trained
    # strength: the text-to-image task has no scale parameter (see provider.py).
    generation_lora: str | None = None
    generation_fallback_model: str | None = "black-forest-labs/FLUX.1-schnell"
    generation_fallback_steps: int = 4
    generation_fallback_guidance: float = 0.0
    generation_width: int = 1024
    generation_height: int = 1024
    generation_steps: int = 30
    generation_guidance: float = 3.5

    # How the provider is called: every wait is bounded.
    provider_timeout_seconds: float = 120.0
    provider_attempts: int = 4  # per model, for 5xx and timeouts (backoff with jitter in between)
    provider_backoff_seconds: float = 1.0
    provider_max_backoff_seconds: float = 20.0
    provider_max_wait_seconds: float = 60.0  # longest single wait for "model loading" (503) or a 429
    provider_loading_retries: int = 5  # 503 "currently loading" answers waited out per model
    provider_rate_limit_retries: int = 5  # 429 answers waited out per model

    # Credits (spec §5.1): the first image, then each further variation.
    first_image_cost: int = 15
    variation_cost: int = 10
    max_count: int = 5

    # Jobs.
    generation_sync_wait_s: float = 120.0  # the synchronous generate waits this long, then answers 202
    # The credit holds live this long; a job not finished `hold_margin_seconds` before they expire is failed
    # (and released) instead of producing images whose capture could arrive after the hold expired.
    hold_ttl_seconds: int = 3600
    hold_margin_seconds: int = 120
    max_running_per_user: int = 2  # more stay queued until one of the user's jobs ends
    jobs_per_worker: int = 4  # jobs one worker process runs at once (the work queue's prefetch)
    images_in_parallel: int = 2  # provider calls of one job at once
    lease_seconds: float = 60.0  # a running job's worker renews its lease; a dead worker's lease expires
    sweep_seconds: float = 10.0  # expired leases, stalled queues, unsettled cancels, overdue jobs
    redispatch_seconds: float = 30.0  # a queued job not picked up for this long is sent to the workers again
    sse_keepalive_seconds: float = 15.0

    @property
    def provider(self) -> Literal["huggingface", "placeholder"]:
        if self.generation_provider == "auto":
            return "huggingface" if self.huggingface_token else "placeholder"
        return self.generation_provider

    def cost(self, count: int) -> int:
        return self.first_image_cost + self.variation_cost * (count - 1) if count > 0 else 0

    def price(self, index: int) -> int:
        """What the `index`-th image produced (0-based, in the order they were stored) costs."""
        return self.first_image_cost if index == 0 else self.variation_cost

    @model_validator(mode="after")
    def _refuse_placeholder(self) -> "GenerationSettings":
        if self.provider == "placeholder" and self.environment != "development" and self.environment != "test":
            raise ValueError(
                f"HUGGINGFACE_TOKEN must be set outside development (ENVIRONMENT={self.environment}): the "
                "placeholder provider draws fake images and is for development only"
            )
        if self.provider == "huggingface" and not self.huggingface_token:
            raise ValueError("GENERATION_PROVIDER=huggingface needs HUGGINGFACE_TOKEN")
        return self
