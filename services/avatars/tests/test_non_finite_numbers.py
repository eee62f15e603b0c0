"""JSON numbers no JSON answer can carry. Python's JSON reader takes NaN, Infinity and -Infinity (and 1e999 as
infinity); a validation error that names what it received (an enum's `received`) then held a value the error
response could not encode, and the 400 became a 500."""

from __future__ import annotations

import pytest
from avatars_samples import jpeg

APP = "/api/apps/avatar-creator"


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("field", ["gender", "ageRange", "style", "bodyType"])
async def test_a_non_finite_number_for_an_enum_is_400_and_changes_nothing(suite, field, number):
    _, headers = suite.user()
    avatar = await suite.created(headers, await suite.project(headers), jpeg(), gender="female")
    url = f"{APP}/avatars/{avatar['id']}"
    body = f'{{"{field}": {number}, "name": "Changed"}}'
    response = await suite.api.put(url, content=body, headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    issue = response.json()["details"][0]
    assert (issue["code"], issue["path"], issue["received"]) == (
        "invalid_enum_value",
        [field],
        number.replace("1e999", "Infinity"),
    )
    stored = (await suite.api.get(url, headers=headers)).json()["avatar"]
    assert (stored["name"], stored["gender"]) == (avatar["name"], "female")
