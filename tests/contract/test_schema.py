"""The OpenAPI schema itself: valid, generated without warnings, complete where every operation
must be, and the response check (schema.py) refuses what the schema does not describe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command

from tests.contract.schema import check_response, generated_schema

WALLET = "01a22b68-2286-724a-af61-f29f49b42aea"


def operations() -> list[tuple[str, str, dict]]:
    return [
        (method.upper(), path, operation)
        for path, path_item in generated_schema()["paths"].items()
        for method, operation in path_item.items()
    ]


def codes(operation: dict, status: str) -> set[str]:
    schema = operation["responses"][status]["content"]["application/json"]["schema"]
    return set(schema["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"])


def test_schema_is_valid_openapi_and_generates_without_warnings(tmp_path: Path) -> None:
    # --fail-on-warn turns any drf-spectacular warning (an unresolvable field, a name clash) into an error.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))


def test_every_operation_documents_authentication_and_unavailability() -> None:
    for method, path, operation in operations():
        assert codes(operation, "401") == {"authentication_required", "authentication_failed"}, (method, path)
        assert "WWW-Authenticate" in operation["responses"]["401"]["headers"], (method, path)
        assert codes(operation, "503") == {"service_unavailable", "shard_moving"}, (method, path)
        assert "Retry-After" in operation["responses"]["503"]["headers"], (method, path)


def test_every_json_body_documents_malformed_json_and_the_wrong_media_type() -> None:
    for method, path, operation in operations():
        if "requestBody" in operation:
            assert "invalid_json" in codes(operation, "400"), (method, path)
            assert codes(operation, "415") == {"unsupported_media_type"}, (method, path)


def test_lists_document_their_page_envelope_and_bounds() -> None:
    schema = generated_schema()
    for _method, path, operation in operations():
        limit = next((p for p in operation.get("parameters", []) if p["name"] == "limit"), None)
        if limit is None:
            continue
        assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 100), path
        ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        page = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert set(page["required"]) == {"data", "has_more", "next_cursor"}, path
        assert "NextPage" in operation["responses"]["200"]["links"], path


def test_the_check_refuses_a_list_sent_as_a_bare_array() -> None:
    with pytest.raises(BaseExceptionGroup, match="not of type"):
        check_response("GET", "/v1/wallets", "", 200, [("Content-Type", "application/json")], b"[]")


def test_the_check_refuses_an_undocumented_status_and_an_undocumented_code() -> None:
    headers = [("Content-Type", "application/json")]
    body = json.dumps({"error": {"code": "wallet_frozen", "message": "No.", "param": None}}).encode()
    with pytest.raises(BaseExceptionGroup, match="Undocumented status code"):
        check_response("GET", f"/v1/wallets/{WALLET}", "", 409, headers, body)
    with pytest.raises(BaseExceptionGroup, match="is not one of"):
        check_response("GET", f"/v1/wallets/{WALLET}", "", 404, headers, body)


def test_the_check_refuses_a_401_without_its_header_and_an_undocumented_property() -> None:
    headers = [("Content-Type", "application/json")]
    body = json.dumps({"error": {"code": "authentication_failed", "message": "No.", "param": None}}).encode()
    with pytest.raises(BaseExceptionGroup, match="WWW-Authenticate"):
        check_response("GET", "/v1/wallets", "", 401, headers, body)
    page = json.dumps({"data": [], "has_more": False, "next_cursor": None, "total": 0}).encode()
    with pytest.raises(BaseExceptionGroup, match="Additional properties"):
        check_response("GET", "/v1/wallets", "", 200, headers, page)
