"""Every table a service keeps only for a while is pruned: each service's idempotency keys (but credits',
whose keys guard ledger operations that stay unique forever) and avatars' tombstones."""

from __future__ import annotations

from datetime import timedelta

import pytest

from lumiku_avatars.main import create_app as avatars_app
from lumiku_avatars.settings import AvatarsSettings
from lumiku_credits.main import create_app as credits_app
from lumiku_credits.settings import CreditsSettings
from lumiku_devtools.testing import settings_for_tests
from lumiku_generation.main import create_app as generation_app
from lumiku_generation.settings import GenerationSettings
from lumiku_projects.main import create_app as projects_app
from lumiku_projects.settings import ProjectsSettings
from lumiku_usage.main import create_app as usage_app
from lumiku_usage.settings import UsageSettings

WEEK, FORTNIGHT = timedelta(days=7), timedelta(days=14)


@pytest.mark.parametrize(
    ("create_app", "settings", "retained"),
    [
        (projects_app, ProjectsSettings, {"idempotency_keys": WEEK}),
        (generation_app, GenerationSettings, {"idempotency_keys": WEEK, "deleted_projects": FORTNIGHT}),
        (usage_app, UsageSettings, {"idempotency_keys": WEEK}),
        (
            avatars_app,
            AvatarsSettings,
            {
                "idempotency_keys": WEEK,
                "given_up_images": FORTNIGHT,
                "deleted_projects": FORTNIGHT,
                "deleted_generated_avatars": FORTNIGHT,
            },
        ),
        (credits_app, CreditsSettings, {}),
    ],
    ids=["projects", "generation", "usage", "avatars", "credits"],
)
def test_each_service_prunes_what_it_keeps_for_a_while(create_app, settings, retained):
    app = create_app(settings_for_tests(settings))
    declared = {r.table.name: r.keep for r in app.state.spec.retained}
    assert declared == retained
    assert all(r.stamp in r.table.c for r in app.state.spec.retained)
