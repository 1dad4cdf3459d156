"""The HTTP API's contract: every route documented in /openapi.json, every error JSON with a
stable code, over real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from starlette.routing import Route, WebSocketRoute

from tests.helpers.servers import running_server
from tidesync.server.openapi import OPERATIONS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("http")) as s:
        yield s


def call(server, method, path, body=None, raw_body=None, headers=None):
    data = raw_body if raw_body is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"{server.url}{path}", data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("content-type"), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type"), json.loads(exc.read())


def test_every_route_is_documented_and_every_documented_route_exists(server):
    status, _, doc = call(server, "GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    served: set[tuple[str, str]] = set()
    for route in server.app.routes:
        if isinstance(route, WebSocketRoute):
            served.add(("get", route.path))
        elif isinstance(route, Route):
            served |= {(m.lower(), route.path) for m in route.methods or () if m != "HEAD"}
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert documented == served
    assert len(documented) == len(OPERATIONS)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["summary"] and op["responses"], (method, path)
            for status_code, answer in op["responses"].items():
                if int(status_code) >= 400:
                    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


@pytest.mark.parametrize("method, path, body, raw_body, status, code", [
    ("GET", "/nowhere", None, None, 404, "not_found"),
    ("GET", "/api/default/auth/login", None, None, 405, "method_not_allowed"),
    ("POST", "/api/other-app/auth/login", {"provider": "anonymous"}, None, 404, "app_not_found"),
    ("POST", "/api/default/auth/login", None, b"{not json", 400, "bad_request"),
    ("POST", "/api/default/auth/login", None, b"[1, 2]", 400, "bad_request"),
    ("POST", "/api/default/auth/login", None, b"{" + b" " * 70000 + b"}", 413, "payload_too_large"),
    ("POST", "/api/default/auth/login", {"provider": "email_password"}, None, 403, "provider_disabled"),
    ("POST", "/api/default/auth/login", {"provider": {"$gt": ""}}, None, 403, "provider_disabled"),
    ("POST", "/api/default/auth/refresh", {"refresh_token": 5}, None, 400, "bad_request"),
    ("POST", "/api/default/auth/refresh", {"refresh_token": "nope"}, None, 401, "invalid_refresh_token"),
    ("GET", "/api/default/auth/profile", None, None, 401, "invalid_token"),
    ("GET", "/api/default/conflicts", None, None, 401, "invalid_token"),
    ("POST", "/api/default/email/register", {}, None, 404, "not_found"),
    ("POST", "/api/default/auth/email/register", {"email": "a@b.co", "password": "x" * 10}, None, 403,
     "provider_disabled"),
    ("GET", "/api/default/auth/api_keys", None, None, 403, "provider_disabled"),
])
def test_every_error_is_json_with_a_stable_code(server, method, path, body, raw_body, status, code):
    got, content_type, answer = call(server, method, path, body, raw_body)
    assert (got, answer.get("code")) == (status, code)
    assert content_type == "application/json" and set(answer) == {"error", "code"} and answer["error"]


def test_health(server):
    status, _, answer = call(server, "GET", "/health")
    assert status == 200 and answer["ok"] and answer["app_id"] == "default"
