"""The tool through a real MCP client session (in memory): schema, success, every failure class."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import Client

from danube_mcp.danube.client import DanubeClient
from danube_mcp.tool.handler import SANDBOX_PREFIX, TOOL_NAME, build_server
from danube_mcp.tool.schema import MAX_CREDENTIAL_VALUE, MAX_SERVICE_ID

pytestmark = pytest.mark.anyio

API_KEY = "dk-CANARY-apikey-0123456789abcdef"
SECRET = "sk-CANARY-credential-9876543210fedcba"
GOOD = {"service_id": "svc_openai_001", "credential_type": "bearer", "credential_value": SECRET}

Handler = Callable[[httpx2.Request], httpx2.Response]


def ok_handler(request: httpx2.Request) -> httpx2.Response:
    body = json.loads(request.content)
    return httpx2.Response(
        200,
        json={
            "success": True,
            "service_id": body["service_id"],
            "service_name": "OpenAI",
            "credential_type": body["credential_type"],
            "stored_as": "value",
            "unknown_extra": {"ignored": True},
        },
    )


ERA: list[str] = ["legacy"]


@pytest.fixture(autouse=True, params=["legacy", "2026-07-28"])
def era(request: pytest.FixtureRequest) -> str:
    """Every test here runs in both protocol eras: initialize-era and 2026-07-28 requests."""
    ERA[0] = request.param
    return str(request.param)


@asynccontextmanager
async def session(
    handler: Handler = ok_handler, *, api_key: str | None = API_KEY, **server_kw: Any
) -> AsyncIterator[Client]:
    client = DanubeClient(
        base_url="https://api.example.test",
        api_key=api_key,
        max_retries=0,
        transport=httpx2.MockTransport(handler),
    )
    server, _ = build_server(client, **server_kw)
    async with client, Client(server, mode=ERA[0]) as s:
        yield s


def assert_no_secret(result: types.CallToolResult) -> None:
    dumped = result.model_dump_json()
    assert SECRET not in dumped
    assert API_KEY not in dumped


async def test_tools_list_schema_is_exact() -> None:
    async with session() as s:
        tools = (await s.list_tools()).tools
    assert [t.name for t in tools] == [TOOL_NAME]
    tool = tools[0]
    assert tool.title == "Store credential"
    schema = tool.input_schema
    assert schema["type"] == "object"
    assert schema["required"] == ["service_id", "credential_type", "credential_value"]
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert set(props) == {"service_id", "credential_type", "credential_value"}
    assert props["service_id"] | {"description": ""} == {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_SERVICE_ID,
        "description": "",
    }
    assert props["credential_type"]["enum"] == ["bearer", "api_key"]
    value = props["credential_value"]
    assert value["writeOnly"] is True
    assert value["format"] == "password"
    assert value["maxLength"] == MAX_CREDENTIAL_VALUE
    assert tool.output_schema is not None
    assert tool.output_schema["required"] == ["success", "service_id", "credential_type"]
    ann = tool.annotations
    assert ann is not None
    assert (ann.read_only_hint, ann.destructive_hint, ann.idempotent_hint, ann.open_world_hint) == (
        False,
        True,
        True,
        True,
    )
    description = tool.description or ""
    for phrase in ("replaces", "dashboard", "vault://", "env://", "confirm"):
        assert phrase in description


async def test_success_structured_and_text() -> None:
    async with session() as s:
        result = await s.call_tool(TOOL_NAME, GOOD)
    assert result.is_error is False
    assert result.structured_content == {
        "success": True,
        "service_id": "svc_openai_001",
        "service_name": "OpenAI",
        "credential_type": "bearer",
        "stored_as": "value",
    }
    text = result.content[0].text  # type: ignore[union-attr]
    assert "OpenAI" in text and "svc_openai_001" in text and "bearer token" in text
    assert_no_secret(result)


async def test_sandbox_marks_every_result() -> None:
    async with session(sandbox=True) as s:
        ok = await s.call_tool(TOOL_NAME, GOOD)
        bad = await s.call_tool(TOOL_NAME, {})
    assert ok.content[0].text.startswith(SANDBOX_PREFIX)  # type: ignore[union-attr]
    assert ok.structured_content is not None and ok.structured_content["sandbox"] is True
    assert bad.content[0].text.startswith(SANDBOX_PREFIX)  # type: ignore[union-attr]


BAD_ARGUMENTS = [
    ({}, ["service_id: required", "credential_type: required", "credential_value: required"]),
    ({**GOOD, "service_id": 12}, ["service_id: must be a string, got number"]),
    ({**GOOD, "service_id": "   "}, ["service_id: must not be empty"]),
    ({**GOOD, "service_id": "x" * (MAX_SERVICE_ID + 1)}, ["service_id: must be at most"]),
    ({**GOOD, "service_id": "svc\nx"}, ["service_id: must not contain whitespace"]),
    ({**GOOD, "credential_type": SECRET}, ["credential_type: must be 'bearer' or 'api_key'"]),
    ({**GOOD, "credential_type": "oauth2"}, ["dashboard"]),
    ({**GOOD, "credential_type": None}, ["credential_type: required"]),
    ({**GOOD, "credential_value": 12345}, ["credential_value: must be a string, got number"]),
    ({**GOOD, "credential_value": [SECRET]}, ["credential_value: must be a string, got array"]),
    ({**GOOD, "credential_value": {"k": SECRET}}, ["credential_value: must be a string, got object"]),
    ({**GOOD, "credential_value": ""}, ["credential_value: must not be empty"]),
    ({**GOOD, "credential_value": "a" * (MAX_CREDENTIAL_VALUE + 1)}, ["credential_value: must be at most"]),
    ({**GOOD, "credential_value": SECRET + "\n"}, ["credential_value: contains a control character"]),
    ({**GOOD, "credential_value": SECRET + "\x00"}, ["control character"]),
    ({**GOOD, "credential_value": " " + SECRET}, ["leading or trailing whitespace"]),
    ({**GOOD, "zzz": SECRET}, ["unexpected argument(s): 'zzz'"]),
    ({**GOOD, SECRET: 1}, ["unexpected argument(s)"]),
]


@pytest.mark.parametrize(("arguments", "expected"), BAD_ARGUMENTS)
async def test_bad_arguments_are_named_never_echoed(arguments: dict[str, Any], expected: list[str]) -> None:
    calls: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(request)
        return ok_handler(request)

    async with session(handler) as s:
        result = await s.call_tool(TOOL_NAME, arguments)
        # The server keeps serving after every bad call.
        again = await s.call_tool(TOOL_NAME, GOOD)
    assert result.is_error is True
    text = result.content[0].text  # type: ignore[union-attr]
    assert text.startswith("Invalid arguments: ")
    for fragment in expected:
        assert fragment in text
    assert SECRET not in text and SECRET[:12] not in text
    assert again.is_error is False
    assert len(calls) == 1  # only the good call reached Danube


async def test_unknown_tool_is_a_clean_error() -> None:
    async with session() as s:
        result = await s.call_tool(SECRET, GOOD)
    assert result.is_error is True
    assert "store_credential" in result.content[0].text  # type: ignore[union-attr]
    assert_no_secret(result)


async def test_missing_key_says_how_to_set_it() -> None:
    async with session(api_key=None, api_key_problem="an unsubstituted placeholder") as s:
        result = await s.call_tool(TOOL_NAME, GOOD)
    text = result.content[0].text  # type: ignore[union-attr]
    assert result.is_error is True
    assert "DANUBE_API_KEY" in text and "placeholder" in text and "restart" in text


def status_handler(status: int, body: Any, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx2.Request) -> httpx2.Response:
        if isinstance(body, bytes):
            return httpx2.Response(status, content=body, headers=headers)
        return httpx2.Response(status, json=body, headers=headers)

    return handler


def echo(message: str) -> dict[str, Any]:
    return {"error": {"code": "x", "message": f"{message} {SECRET} {API_KEY}", "details": {}}}


UPSTREAM_FAILURES = [
    (400, echo("bad"), "HTTP 400", "do not retry unchanged"),
    (422, {"detail": [{"loc": ["body", "x"], "msg": "bad", "input": SECRET}]}, "HTTP 422", "x: bad"),
    (401, echo("invalid key"), "HTTP 401", "DANUBE_API_KEY"),
    (403, echo("forbidden"), "HTTP 403", "do not retry"),
    (404, {"detail": "Service not found"}, "HTTP 404", "service id"),
    (429, {"message": "slow down"}, "HTTP 429", "try again"),
    (429, {"error": {"message": "cap"}, "upgrade_url": "https://danube.example/upgrade"}, "plan", "upgrade"),
    (500, b"<html><body>oops</body></html>", "HTTP 500", "Try again"),
    (503, b"", "HTTP 503", "Try again"),
    (200, {"success": False, "error": f"plaintext refused {SECRET}"}, "refused", "Nothing was stored"),
    (200, b"not json", "not a JSON object", "retrying is safe"),
    (200, {"success": True, "service_id": "s"}, "service_name", "retrying is safe"),
]


@pytest.mark.parametrize(("status", "body", "fragment", "advice"), UPSTREAM_FAILURES)
async def test_upstream_failures_become_actionable_tool_errors(
    status: int, body: Any, fragment: str, advice: str
) -> None:
    async with session(status_handler(status, body)) as s:
        result = await s.call_tool(TOOL_NAME, GOOD)
    assert result.is_error is True
    assert result.structured_content is None
    text = result.content[0].text  # type: ignore[union-attr]
    assert fragment in text
    assert advice in text
    assert_no_secret(result)


async def test_connection_failure_is_a_tool_error() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    async with session(handler) as s:
        result = await s.call_tool(TOOL_NAME, GOOD)
    assert result.is_error is True
    assert "Could not reach Danube" in result.content[0].text  # type: ignore[union-attr]


async def test_unexpected_exception_is_contained() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise RuntimeError(f"boom {SECRET}")

    async with session(handler) as s:
        result = await s.call_tool(TOOL_NAME, GOOD)
        again = await s.call_tool(TOOL_NAME, GOOD)
    assert result.is_error is True
    assert "Internal error" in result.content[0].text  # type: ignore[union-attr]
    assert_no_secret(result)
    assert again.is_error is True  # same handler, still serving


async def test_per_caller_key_and_require_client_key() -> None:
    seen: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.headers["danube-api-key"])
        return ok_handler(request)

    async with session(handler, caller_key=lambda req: "caller-key") as s:
        assert (await s.call_tool(TOOL_NAME, GOOD)).is_error is False
    async with session(handler, caller_key=lambda req: None) as s:
        assert (await s.call_tool(TOOL_NAME, GOOD)).is_error is False
    async with session(handler, caller_key=lambda req: None, require_client_key=True) as s:
        refused = await s.call_tool(TOOL_NAME, GOOD)
    assert seen == ["caller-key", API_KEY]
    assert refused.is_error is True
    assert "danube-api-key" in refused.content[0].text  # type: ignore[union-attr]
