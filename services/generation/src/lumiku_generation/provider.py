"""The AI provider (spec §4): one interface, a Hugging Face implementation and a development placeholder.

Hugging Face is called over plain HTTP (httpx), not through `huggingface_hub`'s AsyncInferenceClient: that
client brings aiohttp and its own retry and "wait for model" policy, while here every wait must be bounded and
each answer handled as the task's contract says, and tested against a stand-in server:
- 503 "currently loading" with `estimated_time`: wait that long (at most `provider_max_wait_seconds`), retry;
- 429: wait `Retry-After` (bounded), retry;
- other 5xx, timeouts, broken connections: bounded retries with exponential backoff and jitter;
- other 4xx: fail at once with the provider's message (no retry, no fallback: the request itself is wrong);
- 200 whose body is no JPEG/PNG/WebP: fail.
When the primary model keeps failing (retries exhausted), the fallback model is tried the same way.

LoRA (`GENERATION_LORA`, e.g. `XLabs-AI/flux-RealismLora`): the text-to-image task's parameters have no adapter
fields (`guidance_scale`, `negative_prompt`, `num_inference_steps`, `width`, `height`, `scheduler`, `seed`), so
nothing about the adapter goes in the body. Hugging Face's inference serves an adapter repository under its own
id instead: `POST {base}/{lora}` loads the adapter card's `base_model` (FLUX.1-dev for the RealismLora) and applies
the adapter to it. So with a LoRA the primary call goes to the adapter's endpoint with the same task body; the
image is reported as made by `GENERATION_MODEL` with that `lora`. The adapter is applied at its trained strength:
the task has no scale parameter, so the original's "scale 0.9" cannot be sent (a deployment that needs another
strength serves its own endpoint through `HUGGINGFACE_INFERENCE_URL`). The fallback model runs without the LoRA
(an adapter for FLUX.1-dev does not fit FLUX.1-schnell's few-step schedule).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from lumiku_common import metrics
from lumiku_common.logs import get_logger
from lumiku_generation.drawing import draw_png
from lumiku_generation.settings import GenerationSettings

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ImageRequest:
    prompt: str  # enhanced
    negative_prompt: str
    seed: int
    width: int
    height: int
    steps: int
    guidance: float


@dataclass(frozen=True, slots=True)
class ProviderImage:
    data: bytes
    provider: str
    model: str
    seed: int
    width: int
    height: int
    steps: int
    guidance: float
    lora: str | None = None


class ProviderError(Exception):
    """The provider gave no image. `reason` is shown to the user ("AI generation failed: <reason>")."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ProviderRejected(ProviderError):
    """The provider refused the request (4xx) or answered with no image: retrying cannot help."""


class ProviderUnavailable(ProviderError):
    """The provider kept failing (5xx, timeouts, loading, rate limits) until the retries ran out."""


class Provider(Protocol):
    name: str

    async def generate(self, request: ImageRequest) -> ProviderImage: ...

    async def aclose(self) -> None: ...


def is_image(data: bytes) -> bool:
    return (
        data.startswith(b"\xff\xd8\xff")
        or data.startswith(b"\x89PNG\r\n\x1a\n")
        or (len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP")
    )


@dataclass(frozen=True, slots=True)
class _Model:
    id: str  # the model that makes the image (reported)
    steps: int
    guidance: float
    lora: str | None = None  # an adapter of `id`, served under its own id

    @property
    def endpoint(self) -> str:
        return self.lora or self.id


Sleep = Callable[[float], Awaitable[None]]


class HuggingFaceProvider:
    name = "huggingface"

    def __init__(
        self,
        settings: GenerationSettings,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
    ):
        self.settings, self.sleep = settings, sleep
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.provider_timeout_seconds, connect=10.0),
            transport=transport,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )

    def _models(self, request: ImageRequest) -> list[_Model]:
        s = self.settings
        models = [_Model(s.generation_model, request.steps, request.guidance, s.generation_lora)]
        if s.generation_fallback_model and s.generation_fallback_model != s.generation_model:
            models.append(
                _Model(s.generation_fallback_model, s.generation_fallback_steps, s.generation_fallback_guidance)
            )
        return models

    async def generate(self, request: ImageRequest) -> ProviderImage:
        failure: ProviderError | None = None
        for model in self._models(request):
            try:
                data = await self._call(model, request)
            except ProviderRejected:
                raise
            except ProviderUnavailable as exc:
                log.warning("provider_model_failed", model=model.id, reason=exc.reason)
                failure = exc
                continue
            return ProviderImage(
                data,
                self.name,
                model.id,
                request.seed,
                request.width,
                request.height,
                model.steps,
                model.guidance,
                model.lora,
            )
        assert failure is not None
        raise failure

    def _body(self, model: _Model, request: ImageRequest) -> dict[str, Any]:
        parameters = {
            "negative_prompt": request.negative_prompt,
            "width": request.width,
            "height": request.height,
            "num_inference_steps": model.steps,
            "guidance_scale": model.guidance,
            "seed": request.seed,
        }
        return {"inputs": request.prompt, "parameters": parameters}

    def _backoff(self, failures: int) -> float:
        s = self.settings
        ceiling = min(s.provider_max_backoff_seconds, s.provider_backoff_seconds * 2 ** (failures - 1))
        return ceiling * random.uniform(0.5, 1.0)  # jitter: workers retrying together spread out

    async def _call(self, model: _Model, request: ImageRequest) -> bytes:
        s = self.settings
        url = f"{s.huggingface_inference_url.rstrip('/')}/{model.endpoint}"
        headers = {"Authorization": f"Bearer {s.huggingface_token}", "Accept": "image/png, image/jpeg, image/webp"}
        body = self._body(model, request)
        failures = loading = limited = 0
        while True:
            started = time.perf_counter()
            try:
                response = await self.http.post(url, json=body, headers=headers)
            except httpx.TimeoutException:
                reason = "the provider timed out"
                self._measure(started, None, None)
            except httpx.TransportError as exc:
                reason = f"the provider could not be reached ({type(exc).__name__})"
                self._measure(started, None, None)
            else:
                status = response.status_code
                self._measure(started, status, response)
                if status == 200:
                    if not is_image(response.content):
                        raise ProviderRejected("the provider answered without an image")
                    return response.content
                message = _message(response)
                if status == 503 and (estimated := _loading(response)) is not None:
                    loading += 1
                    if loading > s.provider_loading_retries:
                        raise ProviderUnavailable(f"model {model.id} is still loading")
                    wait = min(max(estimated, 0.0), s.provider_max_wait_seconds)
                    log.info("provider_model_loading", model=model.id, wait=wait)
                    await self.sleep(wait)
                    continue
                if status == 429:
                    limited += 1
                    if limited > s.provider_rate_limit_retries:
                        raise ProviderUnavailable("the provider's rate limit was exceeded")
                    wait = min(_retry_after(response) or self._backoff(limited), s.provider_max_wait_seconds)
                    log.info("provider_rate_limited", model=model.id, wait=wait)
                    await self.sleep(wait)
                    continue
                if status < 500:
                    raise ProviderRejected(message or f"the provider refused the request ({status})")
                reason = message or f"the provider failed ({status})"
            failures += 1
            if failures >= s.provider_attempts:
                raise ProviderUnavailable(reason)
            wait = self._backoff(failures)
            log.info("provider_retry", model=model.id, reason=reason, attempt=failures, wait=round(wait, 3))
            await self.sleep(wait)

    def _measure(self, started: float, status: int | None, response: httpx.Response | None) -> None:
        outcome = _outcome(status, response)
        metrics.PROVIDER_DURATION.labels(self.name, outcome).observe(time.perf_counter() - started)
        if outcome != "ok":
            metrics.PROVIDER_ERRORS.labels(self.name, outcome).inc()

    async def aclose(self) -> None:
        await self.http.aclose()


def _outcome(status: int | None, response: httpx.Response | None) -> str:
    """The kind of a provider answer, for metrics: no answer (timeout, broken connection) is `failed`."""
    if status is None or response is None:
        return "failed"
    if status == 200:
        return "ok" if is_image(response.content) else "rejected"
    if status == 503 and _loading(response) is not None:
        return "loading"
    if status == 429:
        return "rate_limited"
    return "rejected" if status < 500 else "failed"


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = json.loads(response.content)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _message(response: httpx.Response) -> str:
    error = _json(response).get("error")
    if isinstance(error, list):
        error = "; ".join(str(e) for e in error)
    return str(error)[:300] if error else ""


def _loading(response: httpx.Response) -> float | None:
    """The wait a "model is currently loading" 503 asks for; None when the 503 is something else."""
    body = _json(response)
    estimated = body.get("estimated_time")
    if isinstance(estimated, int | float):
        return float(estimated)
    return 20.0 if "loading" in str(body.get("error", "")).lower() else None


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


class PlaceholderProvider:
    """Development only (refused elsewhere by the settings): draws a deterministic image from the prompt and
    the seed, so generation works offline. Everything it makes says `provider: placeholder`."""

    name = "placeholder"

    def __init__(self, settings: GenerationSettings):
        self.settings = settings

    async def generate(self, request: ImageRequest) -> ProviderImage:
        data = await asyncio.to_thread(draw_png, request.prompt, request.seed, request.width, request.height)
        return ProviderImage(
            data, self.name, "placeholder", request.seed, request.width, request.height, request.steps, request.guidance
        )

    async def aclose(self) -> None:
        return None


def provider_from(settings: GenerationSettings, transport: httpx.AsyncBaseTransport | None = None) -> Provider:
    if settings.provider == "placeholder":
        return PlaceholderProvider(settings)
    return HuggingFaceProvider(settings, transport)


def image_request(settings: GenerationSettings, prompt: str, negative: str, seed: int) -> ImageRequest:
    s = settings
    return ImageRequest(
        prompt, negative, seed, s.generation_width, s.generation_height, s.generation_steps, s.generation_guidance
    )


__all__ = ["ImageRequest", "Provider", "ProviderError", "ProviderImage", "provider_from"]
