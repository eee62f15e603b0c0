"""The suite's OpenAPI merge: schema names two services define differently are kept apart, not overwritten."""

from __future__ import annotations

from typing import Any

from lumiku_gateway.openapi import SuiteOpenAPI

REF = "#/components/schemas/"


def _spec(path: str, schemas: dict[str, Any], returns: str) -> dict[str, Any]:
    response = {"200": {"content": {"application/json": {"schema": {"$ref": REF + returns}}}}}
    return {"paths": {path: {"delete": {"responses": response}}}, "components": {"schemas": schemas}}


def _merged(specs: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    return SuiteOpenAPI(None, "t", "1")._merge(specs)  # type: ignore[arg-type]


def _returns(doc: dict[str, Any], path: str) -> str:
    ref: str = doc["paths"][path]["delete"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    return ref.removeprefix(REF)


ERROR = {"type": "object", "properties": {"error": {"type": "string"}}}


def test_identical_schemas_are_shared_under_their_name():
    deleted = {"type": "object", "properties": {"message": {"type": "string"}}}
    doc = _merged(
        {
            "projects": _spec("/api/p/{id}", {"DeletedResponse": deleted, "ErrorBody": ERROR}, "DeletedResponse"),
            "avatars": _spec("/api/a/{id}", {"DeletedResponse": dict(deleted), "ErrorBody": ERROR}, "DeletedResponse"),
        }
    )
    assert set(doc["components"]["schemas"]) == {"DeletedResponse", "ErrorBody"}
    assert _returns(doc, "/api/p/{id}") == _returns(doc, "/api/a/{id}") == "DeletedResponse"


def test_clashing_schemas_are_renamed_per_service_with_their_references():
    projects_deleted = {"type": "object", "properties": {"message": {"type": "string"}}}
    avatars_deleted = {"type": "object", "properties": {"message": {"type": "string"}, "count": {"type": "integer"}}}
    # A schema that refers to the clashing one must follow it to its new name too.
    wrapper = {"type": "object", "properties": {"result": {"$ref": REF + "DeletedResponse"}}}
    doc = _merged(
        {
            "projects": _spec("/api/p/{id}", {"DeletedResponse": projects_deleted}, "DeletedResponse"),
            "avatars": _spec("/api/a/{id}", {"DeletedResponse": avatars_deleted, "Wrapper": wrapper}, "Wrapper"),
            "credits": None,  # unavailable: left out
        }
    )
    schemas = doc["components"]["schemas"]
    assert set(schemas) == {"ProjectsDeletedResponse", "AvatarsDeletedResponse", "Wrapper"}
    assert schemas["ProjectsDeletedResponse"] == projects_deleted
    assert schemas["AvatarsDeletedResponse"] == avatars_deleted
    assert schemas["Wrapper"]["properties"]["result"]["$ref"] == REF + "AvatarsDeletedResponse"
    assert _returns(doc, "/api/p/{id}") == "ProjectsDeletedResponse"
    assert "credits" in doc["info"]["description"]
