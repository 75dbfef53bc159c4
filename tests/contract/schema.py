"""Hold API responses to the OpenAPI schema that `/v1/schema/` serves.

`check_response` validates one response: its status must be documented for the operation, its
body must match that status's schema, and the headers the schema declares for it must be there
and valid. The checks are schemathesis's own, the same ones the fuzzer (test_fuzz.py) runs.
Response objects are held strictly: a property the schema does not list is a violation (the
published schema leaves them open, so that clients survive a field being added).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

import requests
import schemathesis
from rest_framework.test import APIClient
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [status_code_conformance, content_type_conformance, response_headers_conformance, response_schema_conformance]
# Served by Django beside the API, not operations of it.
NOT_OPERATIONS = ("/v1/schema/", "/v1/docs/")
# What a URL that names no operation answers: no route, or a method the route does not take.
NO_OPERATION_CODES = {404: "not_found", 405: "method_not_allowed"}


@functools.cache
def generated_schema() -> dict[str, Any]:
    """The schema as `/v1/schema/` renders it, as plain JSON (do not change it: it is shared)."""
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.renderers import OpenApiJsonRenderer

    return json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(request=None, public=True)))


def strict(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of `raw` whose response objects admit no property they do not list.

    Request bodies stay open: the API ignores unknown fields, and the fuzzer would otherwise
    expect it to refuse them."""
    raw = json.loads(json.dumps(raw))
    components = raw.get("components", {}).get("schemas", {})
    in_requests = _referenced(
        (op["requestBody"] for item in raw["paths"].values() for op in item.values() if "requestBody" in op),
        components,
    )
    for name, component in components.items():
        if name not in in_requests and "properties" in component:
            component["additionalProperties"] = False
    return raw


def _referenced(roots: Iterable[Any], components: dict[str, Any]) -> set[str]:
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] not in seen:
                name = ref.rsplit("/", 1)[1]
                seen.add(name)
                stack.append(components[name])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return seen


@functools.cache
def _schema() -> tuple[Any, list[tuple[re.Pattern[str], str, set[str]]]]:
    raw = strict(generated_schema())
    routes = []
    # Literal paths first: /v1/transfers/batch before /v1/transfers/{transfer_id}.
    for template in sorted(raw["paths"], key=lambda path: path.count("{")):
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        routes.append((re.compile(f"^{regex}$"), template, {method.upper() for method in raw["paths"][template]}))
    return schemathesis.openapi.from_dict(raw), routes


def check_response(
    method: str, path: str, query: str, status: int, headers: Iterable[tuple[str, str]], content: bytes
) -> None:
    """Raise (a schemathesis FailureGroup, or AssertionError) if this response is not what the schema says."""
    __tracebackhide__ = True
    if not path.startswith("/v1/") or path.startswith(NOT_OPERATIONS):
        return
    method = method.upper()
    found = _operation(method, path)
    if found is None:
        _check_no_operation(method, path, status, content)
        return
    operation, path_parameters = found
    case = operation.Case(path_parameters=path_parameters, query=dict(parse_qsl(query)))
    request = requests.Request(method, f"http://testserver{path}" + (f"?{query}" if query else "")).prepare()
    wire_headers: dict[str, list[str]] = {}
    for name, value in headers:
        wire_headers.setdefault(name.lower(), []).append(value)
    response = schemathesis.Response(status, wire_headers, content, request, 0.0, True)
    case.validate_response(response, checks=CHECKS)


def _operation(method: str, path: str) -> tuple[Any, dict[str, str]] | None:
    schema, routes = _schema()
    for regex, template, methods in routes:
        match = regex.match(path)
        if match and method in methods:
            return schema[template][method], match.groupdict()
    return None


def _check_no_operation(method: str, path: str, status: int, content: bytes) -> None:
    __tracebackhide__ = True
    body = json.loads(content)
    assert status in NO_OPERATION_CODES, f"{method} {path} is no operation of the schema, yet answered {status}"
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "param"}, body
    assert body["error"]["code"] == NO_OPERATION_CODES[status], body


class CheckedAPIClient(APIClient):
    """DRF's test client; every response it returns has passed `check_response`."""

    def request(self, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        response = super().request(**kwargs)
        environ = response.request
        check_response(
            environ["REQUEST_METHOD"],
            environ["PATH_INFO"],
            environ.get("QUERY_STRING", ""),
            response.status_code,
            response.headers.items(),
            response.content,
        )
        return response
