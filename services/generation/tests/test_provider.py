"""The Hugging Face provider against the stand-in over real TCP, without the rest of the suite: the request it
sends with a LoRA configured."""

from __future__ import annotations

from generation_support import FALLBACK, MODEL, generation_settings

from lumiku_devtools.fake_hf import TASK_PARAMETERS, FakeHuggingFace
from lumiku_generation.prompts import NEGATIVE_PROMPT
from lumiku_generation.provider import HuggingFaceProvider, ImageRequest

LORA = "XLabs-AI/flux-RealismLora"


def _request(seed: int = 7) -> ImageRequest:
    return ImageRequest("a portrait, professional photo", NEGATIVE_PROMPT, seed, 64, 64, 30, 3.5)


async def test_a_lora_is_called_under_its_own_id_with_the_task_s_body_only(
    fake_hf: tuple[FakeHuggingFace, str],
) -> None:
    fake, url = fake_hf
    fake.reset()
    provider = HuggingFaceProvider(generation_settings("genlora", url, generation_lora=LORA))
    try:
        made = await provider.generate(_request())
    finally:
        await provider.aclose()
    [call] = fake.calls
    assert call.model == LORA and call.answer == "ok"  # the stand-in refuses parameters the task does not have
    assert set(call.body) == {"inputs", "parameters"} and set(call.body["parameters"]) <= TASK_PARAMETERS
    assert call.body["parameters"]["seed"] == 7 and call.body["parameters"]["guidance_scale"] == 3.5
    assert (made.model, made.lora, made.steps, made.guidance) == (MODEL, LORA, 30, 3.5)


async def test_the_fallback_runs_without_the_lora(fake_hf: tuple[FakeHuggingFace, str]) -> None:
    fake, url = fake_hf
    fake.reset()
    fake.script(LORA, "error", "error", "error")
    provider = HuggingFaceProvider(generation_settings("genlora", url, generation_lora=LORA))
    try:
        made = await provider.generate(_request())
    finally:
        await provider.aclose()
    assert [c.model for c in fake.calls] == [LORA, LORA, LORA, FALLBACK]
    assert (made.model, made.lora, made.steps, made.guidance) == (FALLBACK, None, 4, 0.0)


async def test_the_stand_in_refuses_parameters_the_task_does_not_have(fake_hf: tuple[FakeHuggingFace, str]) -> None:
    """What makes the test above able to fail: a body with adapter fields is a 400, as on the real server."""
    fake, _ = fake_hf
    fake.reset()
    body = {"inputs": "x", "parameters": {"seed": 1, "lora_weights": LORA, "lora_scale": 0.9}}
    response = await fake.answer(MODEL, body, None)
    assert response.status_code == 400 and b"lora_scale, lora_weights" in response.body
