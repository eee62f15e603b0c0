"""The upload pipeline's stages as the avatars service's /metrics shows them."""

from __future__ import annotations

from avatars_samples import jpeg

from lumiku_devtools.testing import Metrics

STAGES = ("project", "admit", "hold", "process", "store", "commit")


async def test_each_upload_stage_is_timed(suite):
    _, headers = suite.user()
    project = await suite.project(headers)
    async with suite.direct() as avatars:
        before = await Metrics.scrape(avatars)
        response = await suite.upload(headers, project, jpeg(64, 64))
        after = await Metrics.scrape(avatars)
    assert response.status_code == 201, response.text
    name = "lumiku_avatars_upload_stage_duration_seconds_count"
    for stage in STAGES:
        assert (after.value(name, stage=stage) or 0) - (before.value(name, stage=stage) or 0) == 1, stage
    route = "/api/apps/avatar-creator/projects/{project_id}/avatars"
    requests = {"service": "avatars", "method": "POST", "route": route, "status": "201"}
    counted = "lumiku_http_request_duration_seconds_count"
    assert (after.value(counted, **requests) or 0) - (before.value(counted, **requests) or 0) == 1
