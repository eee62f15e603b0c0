"""Prompt engineering exactly as spec §4.2: the realism suffix and the negative prompt."""

from __future__ import annotations

REALISM_SUFFIX = (
    "professional photo, realistic, high quality, detailed facial features, natural lighting, sharp focus, "
    "8k uhd, dslr, soft lighting, high quality, film grain, Fujifilm XT3"
)

NEGATIVE_PROMPT = (
    "cartoon, anime, drawing, sketch, illustration, low quality, blurry, distorted face, multiple faces, deformed, "
    "ugly, bad anatomy, bad proportions, extra limbs, cloned face, disfigured, gross proportions, malformed limbs, "
    "missing arms, missing legs, extra arms, extra legs, fused fingers, too many fingers, long neck"
)


def enhance(prompt: str) -> str:
    """`${userPrompt}, professional photo, ...` (the spec's template; its line breaks are layout, not prompt)."""
    return f"{prompt}, {REALISM_SUFFIX}"
