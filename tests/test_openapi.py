"""The OpenAPI document of the HTTP API: valid OpenAPI 3.0, and the same routes as the app.

The meta-schema check uses the OpenAPI 3.0 JSON schema that schemathesis ships (a dev
dependency); the structural checks below need nothing beyond PyYAML.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from aiohttp.test_utils import TestClient

from sidecar.runtime import Components
from sidecar.web import create_app
from tests.support.binaries import skip_or_fail

SPEC_PATH = Path(__file__).parent.parent / "sidecar" / "web" / "openapi.yaml"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# aiohttp adds a HEAD route beside every GET (allow_head=True); it is not part of the API.
IMPLICIT = {"HEAD", "*"}  # "*": the catch-all that answers 404 and 405 as JSON


def load_spec() -> dict[str, Any]:
    """The document, parsed."""
    spec: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    return spec


def operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(METHOD, path) -> operation object."""
    return {
        (method.upper(), path): item[method]
        for path, item in spec["paths"].items()
        for method in METHODS
        if method in item
    }


def resolve(spec: dict[str, Any], ref: str) -> Any:
    """Follow a local ``#/a/b`` reference."""
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    node: Any = spec
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"dangling $ref {ref}"
        node = node[part]
    return node


def all_refs(node: Any) -> list[str]:
    """Every ``$ref`` value anywhere in ``node``."""
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in all_refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in all_refs(value)]
    return []


def test_the_document_is_valid_openapi_3_0() -> None:
    try:
        from jsonschema import Draft4Validator
        from schemathesis.specs.openapi.definitions import OPENAPI_30
    except ImportError:
        skip_or_fail("schemathesis (a dev dependency) is needed for the OpenAPI meta-schema")
    spec = load_spec()
    errors = sorted(Draft4Validator(OPENAPI_30).iter_errors(spec), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    assert spec["openapi"].startswith("3.0.")


def test_every_reference_resolves_and_every_component_is_used() -> None:
    spec = load_spec()
    refs = all_refs(spec)
    for ref in refs:
        resolve(spec, ref)
    used = set(refs)
    for kind in ("schemas", "responses", "parameters", "requestBodies"):
        for name in spec["components"].get(kind, {}):
            assert f"#/components/{kind}/{name}" in used, f"unused component {kind}/{name}"


def test_path_parameters_match_the_templates_and_ids_are_unique() -> None:
    spec = load_spec()
    ids = [op["operationId"] for op in operations(spec).values()]
    assert len(ids) == len(set(ids))
    for path, item in spec["paths"].items():
        templated = set(re.findall(r"{([^}]+)}", path))
        for method in METHODS:
            if method not in item:
                continue
            params = [
                resolve(spec, p["$ref"]) if "$ref" in p else p
                for p in item.get("parameters", []) + item[method].get("parameters", [])
            ]
            declared = {p["name"] for p in params if p["in"] == "path"}
            assert declared == templated, f"{method.upper()} {path}"
            assert all(p["required"] for p in params if p["in"] == "path")


def test_every_operation_documents_its_error_answers_as_json_with_an_error() -> None:
    spec = load_spec()
    schemes = spec["components"]["securitySchemes"]
    for (method, path), op in operations(spec).items():
        responses = op["responses"]
        assert "200" in responses, f"{method} {path}"
        for requirement in op.get("security", []):
            assert set(requirement) <= set(schemes)
        if op.get("security"):
            assert "401" in responses, f"{method} {path} takes credentials, so it answers 401"
        if "requestBody" in op:
            assert "413" in responses, f"{method} {path} has a body, so it answers 413"
            assert "400" in responses, f"{method} {path} has a body, so it answers 400"
        for code, answer in responses.items():
            if int(code) < 400:
                continue
            if "$ref" in answer:
                answer = resolve(spec, answer["$ref"])
            schema = answer["content"]["application/json"]["schema"]
            if "$ref" in schema:
                schema = resolve(spec, schema["$ref"])
            if path == "/readyz":
                assert "status" in schema["required"]
            else:
                assert "error" in schema["required"], f"{method} {path} {code}"


def test_the_alertmanager_body_follows_the_payload_model() -> None:
    import msgspec

    from sidecar.alertmanager import Alert, Notification

    schemas = load_spec()["components"]["schemas"]
    for model, name in ((Notification, "AlertmanagerNotification"), (Alert, "AlertmanagerAlert")):
        documented = schemas[name]
        fields = msgspec.structs.fields(model)
        aliases = {f.encode_name for f in fields}
        required = {f.encode_name for f in fields if f.required}
        assert set(documented["properties"]) == aliases, name
        assert set(documented["required"]) == required, name
        assert documented["additionalProperties"] is True, "unknown fields are accepted"


def test_every_route_of_the_app_is_documented_and_nothing_else(components: Components) -> None:
    app = create_app(components)
    routed = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method not in IMPLICIT
    }
    documented = set(operations(load_spec()))
    assert routed - documented == set(), "routes missing from sidecar/web/openapi.yaml"
    assert documented - routed == set(), "documented operations the app does not serve"


async def test_the_document_is_served_at_openapi_yaml(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/openapi.yaml")
    assert resp.status == 200
    assert yaml.safe_load(await resp.text()) == load_spec()
