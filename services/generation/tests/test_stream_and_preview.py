"""The job's event stream (order, resume) and previews (free, shaped as §3.2, rate-limited)."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
from generation_support import APP, MODEL, Suite

from lumiku_devtools.testing import settings_for_tests
from lumiku_gateway.main import create_app as create_gateway
from lumiku_gateway.settings import GatewaySettings


def _events(raw: str) -> list[dict[str, Any]]:
    found = []
    for block in raw.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if fields:
            found.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
    return found


async def test_sse_shows_every_step_in_order_and_resumes_after_last_event_id(suite: Suite) -> None:
    _, headers = suite.user()
    project_id = await suite.project(headers)
    suite.fake.script(MODEL, "bad")
    response = await suite.generate(headers, project_id, count=3)
    assert response.status_code == 201, response.text
    job_id = response.json()["generation"]["id"]
    stream = await suite.api.get(f"{APP}/generations/{job_id}/events", headers=headers)
    assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
    events = _events(stream.text)
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["queued", "running"] and kinds[-1] == "partially_succeeded"
    assert sorted(kinds[2:-1]) == ["image", "image", "image_failed"]
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    images = [e["data"] for e in events if e["event"] == "image"]
    assert [i["produced"] for i in images] == [1, 2]
    assert all(i["avatar"]["id"] == i["avatarId"] for i in images)
    assert events[-1]["data"]["generation"]["charged"] == 25
    resumed = await suite.api.get(
        f"{APP}/generations/{job_id}/events", headers={**headers, "Last-Event-ID": str(events[2]["id"])}
    )
    assert _events(resumed.text) == events[3:]
    # Resuming after the end of a finished job's stream ends at once (found by schema fuzzing: it waited).
    for last in (events[-1]["id"], 2**31 - 1):
        ended = await suite.api.get(
            f"{APP}/generations/{job_id}/events", headers={**headers, "Last-Event-ID": str(last)}
        )
        assert ended.status_code == 200 and _events(ended.text) == []


async def test_preview_is_free_shaped_as_the_spec_and_passes_the_pipeline(suite: Suite) -> None:
    user_id, headers = suite.user()
    project_id = await suite.project(headers)
    response = await suite.api.post(
        f"{APP}/projects/{project_id}/avatars/generate-preview",
        json={"prompt": "Casual young man, t-shirt, smiling", "gender": "male", "bodyType": "full_body"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["message"].startswith("Preview generated successfully")
    preview = body["preview"]
    assert preview["enhancedPrompt"].startswith("Casual young man, t-shirt, smiling, professional photo, realistic")
    assert preview["imageBase64"].startswith("data:image/png;base64,")
    # Re-encoded by the upload pipeline: the data URL names what its bytes are (thumbnails of opaque images: JPEG).
    kind, encoded = preview["thumbnailBase64"].split(",", 1)
    assert kind == "data:image/jpeg;base64" and base64.b64decode(encoded).startswith(b"\xff\xd8\xff")
    metadata = preview["metadata"]
    assert (metadata["provider"], metadata["model"]) == ("huggingface", MODEL)
    assert (metadata["width"], metadata["height"], metadata["steps"], metadata["guidance"]) == (256, 256, 30, 3.5)
    assert metadata["seed"] == suite.fake.calls[0].body["parameters"]["seed"]
    assert (await suite.balance(headers))["balance"] == 100
    assert await suite.avatars(user_id) == []
    listed = (await suite.api.get(f"{APP}/generations", headers=headers)).json()
    assert listed["pagination"]["total"] == 0


async def test_preview_failure_is_502(suite: Suite) -> None:
    _, headers = suite.user()
    project_id = await suite.project(headers)
    suite.fake.script(MODEL, "bad")
    response = await suite.api.post(
        f"{APP}/projects/{project_id}/avatars/generate-preview", json={"prompt": "a portrait of a man"}, headers=headers
    )
    assert response.status_code == 502 and response.json()["error"].startswith("AI generation failed: ")


async def test_previews_count_against_the_generate_limit(suite: Suite) -> None:
    """20 an hour in the spec; 2 here. A preview is free, so without the limit it could be farmed."""
    settings = settings_for_tests(
        GatewaySettings,
        service_urls={n: f"http://{n}" for n in suite.transports},
        rate_limits={"api": "1000/60", "generate-avatar": "2/3600"},
    )
    gateway = create_gateway(settings, suite.transports)
    _, headers = suite.user()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gw", timeout=30) as api:
        project = await api.post(f"{APP}/projects", json={"name": "P"}, headers=headers)
        project_id = project.json()["project"]["id"]
        preview = f"{APP}/projects/{project_id}/avatars/generate-preview"
        body = {"prompt": "a portrait of a woman"}
        assert (await api.post(preview, json=body, headers=headers)).status_code == 200
        generate = await api.post(
            f"{APP}/projects/{project_id}/avatars/generate", json={**body, "name": "N"}, headers=headers
        )
        assert generate.status_code == 201, generate.text
        limited = await api.post(preview, json=body, headers=headers)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
