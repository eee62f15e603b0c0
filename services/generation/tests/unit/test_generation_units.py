"""Fast tier: settings, prices, prompts, the placeholder's images."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lumiku_common.settings import DEV_JWT_SECRET
from lumiku_generation.drawing import draw_png
from lumiku_generation.prompts import NEGATIVE_PROMPT, enhance
from lumiku_generation.provider import PlaceholderProvider, image_request, is_image, provider_from
from lumiku_generation.settings import GenerationSettings

SECRETS = {k: k * 4 for k in ("jwt_secret", "service_token_secret", "media_url_secret")}  # >= 32, all different


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_the_placeholder_provider_is_refused_outside_development(environment: str) -> None:
    with pytest.raises(ValidationError, match="HUGGINGFACE_TOKEN must be set outside development"):
        GenerationSettings(environment=environment, huggingface_token=None, **SECRETS)
    with pytest.raises(ValidationError, match="placeholder provider"):
        GenerationSettings(environment=environment, generation_provider="placeholder", **SECRETS)
    real = GenerationSettings(environment=environment, huggingface_token="hf_x", **SECRETS)
    assert real.provider == "huggingface"


def test_development_without_a_token_uses_the_labelled_placeholder() -> None:
    settings = GenerationSettings(environment="development", huggingface_token=None, jwt_secret=DEV_JWT_SECRET)
    assert settings.provider == "placeholder"
    assert isinstance(provider_from(settings), PlaceholderProvider)
    with pytest.raises(ValidationError, match="needs HUGGINGFACE_TOKEN"):
        GenerationSettings(generation_provider="huggingface", huggingface_token=None)


def test_defaults_are_the_spec_s_model_and_parameters() -> None:
    s = GenerationSettings(huggingface_token="hf_x")
    assert (s.generation_model, s.generation_fallback_model) == (
        "black-forest-labs/FLUX.1-dev",
        "black-forest-labs/FLUX.1-schnell",
    )
    assert (s.generation_width, s.generation_height, s.generation_steps, s.generation_guidance) == (1024, 1024, 30, 3.5)
    assert (s.generation_fallback_steps, s.generation_fallback_guidance, s.generation_lora) == (4, 0.0, None)
    assert s.generation_sync_wait_s == 120


def test_cost_is_15_then_10_per_variation() -> None:
    s = GenerationSettings()
    assert [s.cost(n) for n in range(6)] == [0, 15, 25, 35, 45, 55]
    assert [s.price(i) for i in range(5)] == [15, 10, 10, 10, 10]


def test_prompt_enhancement_and_negative_prompt_as_spec_4_2() -> None:
    assert enhance("Casual young man") == (
        "Casual young man, professional photo, realistic, high quality, detailed facial features, natural lighting, "
        "sharp focus, 8k uhd, dslr, soft lighting, high quality, film grain, Fujifilm XT3"
    )
    assert NEGATIVE_PROMPT.startswith("cartoon, anime, drawing, sketch, illustration, low quality, blurry")
    assert NEGATIVE_PROMPT.endswith("fused fingers, too many fingers, long neck")


async def test_placeholder_images_are_deterministic_per_prompt_and_seed() -> None:
    s = GenerationSettings(generation_width=64, generation_height=48)
    provider = PlaceholderProvider(s)
    first = await provider.generate(image_request(s, "a prompt", "neg", 7))
    again = await provider.generate(image_request(s, "a prompt", "neg", 7))
    other = await provider.generate(image_request(s, "a prompt", "neg", 8))
    assert first.data == again.data != other.data
    assert is_image(first.data) and first.provider == "placeholder" and (first.width, first.height) == (64, 48)
    assert draw_png("x", 1, 10, 10).startswith(b"\x89PNG\r\n\x1a\n")
