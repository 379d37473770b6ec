"""Secure input (URL-mode elicitation): the value goes from a one-time page to the server, never
through an MCP message. Real processes, real HTTP on 127.0.0.1.

These tests cover the initialize-era flow (a live ``elicitation/create``, SDK client in
``mode="legacy"``), the 2026-07-28 multi-round-trip flow through the SDK client's own driver, and the
page itself. tests/test_secure_input_flows.py covers the link flow and the sealed ``requestState``."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO, cast

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters, types
from mcp.client import ClientRequestContext
from mcp.client.stdio import stdio_client
from mcp.shared.message import SessionMessage

from danube_mcp.sandbox import DEMO_API_KEY, open_store
from procs import MODERN, REPO, Captured, child_env, http_server, mcp_http, mcp_sse

pytestmark = pytest.mark.anyio

VALUE = "sk-CANARY-typed-on-the-page-777777777777"
TOKEN = "tok-CANARY-secure-input-88888888888"
SERVICE = "svc_openai_001"
ARGS = {"service_id": SERVICE, "credential_type": "bearer"}

Elicit = Callable[[types.ElicitRequestURLParams], Awaitable[types.ElicitResult]]


class Tap:
    """Every MCP message in both directions, as JSON text."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def text(self) -> str:
        return "\n".join(self.lines)


@asynccontextmanager
async def tapped(transport: Any, tap: Tap) -> AsyncIterator[tuple[Any, Any]]:
    """A client transport that records every message passing through ``transport``."""
    in_send, in_recv = anyio.create_memory_object_stream[SessionMessage | Exception](32)
    out_send, out_recv = anyio.create_memory_object_stream[SessionMessage](32)

    async with transport as (read, write):

        async def pump_in() -> None:
            async with in_send:
                async for msg in read:
                    if isinstance(msg, SessionMessage):
                        tap.lines.append(msg.message.model_dump_json())
                    await in_send.send(msg)

        async def pump_out() -> None:
            async with out_recv:
                async for msg in out_recv:
                    tap.lines.append(msg.message.model_dump_json())
                    await write.send(msg)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump_in)
            tg.start_soon(pump_out)
            yield in_recv, out_send
            tg.cancel_scope.cancel()


def callback(handler: Elicit, seen: list[types.ElicitRequestURLParams]) -> Any:
    async def cb(
        ctx: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        assert isinstance(params, types.ElicitRequestURLParams), "form mode must never be used for the secret"
        seen.append(params)
        return await handler(params)

    return cb


@asynccontextmanager
async def stdio_session(
    tmp_path: Path,
    handler: Elicit | None,
    seen: list[types.ElicitRequestURLParams],
    tap: Tap,
    mode: str = "legacy",
    **env: str,
) -> AsyncIterator[tuple[Client, Captured]]:
    err = Captured()
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "danube_mcp", "--sandbox", "--sandbox-db", str(tmp_path / "s.db"), "--secure-input"],
        env=child_env(**{"DANUBE_MCP_LOG_LEVEL": "DEBUG", "DANUBE_MCP_SECURE_INPUT_TTL": "20", **env}),
        cwd=str(REPO),
    )
    kw: dict[str, Any] = {}
    if handler is not None:
        kw["elicitation_callback"] = callback(handler, seen)
    async with Client(
        tapped(stdio_client(params, errlog=cast(TextIO, err.file)), tap), mode=mode, **kw
    ) as client:
        yield client, err


async def submit(url: str, value: str = VALUE, origin: str | None = "same") -> httpx2.Response:
    base = re.match(r"(https?://[^/]+)", url)
    assert base is not None
    headers = {"content-type": "application/x-www-form-urlencoded"}
    if origin == "same":
        headers["origin"] = base.group(1)
    elif origin is not None:
        headers["origin"] = origin
    async with httpx2.AsyncClient(timeout=30) as hc:  # a page may wait for the store's outcome
        return await hc.post(
            url, content=f"credential_value={httpx2.QueryParams({'v': value})['v']}", headers=headers
        )


def stored_value(db: Path, service: str = SERVICE) -> str | None:
    store = open_store(str(db))
    try:
        return store.reveal_for_tests(DEMO_API_KEY, service)
    except Exception:
        return None
    finally:
        store.close()


def accepting_and_submitting(pages: list[httpx2.Response], results: list[httpx2.Response]) -> Elicit:
    async def handler(params: types.ElicitRequestURLParams) -> types.ElicitResult:
        async with httpx2.AsyncClient() as hc:
            pages.append(await hc.get(params.url))

        async def later() -> None:
            results.append(await submit(params.url))

        # Accept first (the user agreed to open the page), then "type" the value.
        tg_holder["tg"].start_soon(later)
        return types.ElicitResult(action="accept")

    return handler


tg_holder: dict[str, Any] = {}


async def test_schema_makes_the_value_optional(tmp_path: Path) -> None:
    async with stdio_session(tmp_path, None, [], Tap()) as (client, _):
        tool = (await client.list_tools()).tools[0]
    assert tool.input_schema["required"] == ["service_id", "credential_type"]
    assert "credential_value" in tool.input_schema["properties"]
    assert "omit credential_value" in (tool.description or "")


async def test_value_entered_on_the_page_is_stored_and_never_in_mcp(tmp_path: Path) -> None:
    seen: list[types.ElicitRequestURLParams] = []
    pages: list[httpx2.Response] = []
    posts: list[httpx2.Response] = []
    tap = Tap()
    async with anyio.create_task_group() as tg:
        tg_holder["tg"] = tg
        async with stdio_session(tmp_path, accepting_and_submitting(pages, posts), seen, tap) as (
            client,
            err,
        ):
            result = await client.call_tool("store_credential", ARGS)
            # The link is single-use: a second submission and a second view are refused.
            again = await submit(seen[0].url)
            async with httpx2.AsyncClient() as hc:
                view_again = await hc.get(seen[0].url)
            stderr = err.text()
    assert result.is_error is False, result
    assert result.structured_content is not None and result.structured_content["service_id"] == SERVICE
    assert seen[0].url.startswith("http://127.0.0.1:") and "/secure-input/" in seen[0].url
    assert seen[0].elicitation_id
    page = pages[0]
    assert page.status_code == 200
    assert 'type="password"' in page.text and SERVICE in page.text
    for header, value in (("cache-control", "no-store"), ("x-frame-options", "DENY")):
        assert page.headers[header] == value
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert posts[0].status_code == 200 and "stored" in posts[0].text.lower()
    assert VALUE not in posts[0].text and VALUE not in page.text
    assert again.status_code == 410 and view_again.status_code == 410
    assert stored_value(tmp_path / "s.db") == VALUE
    assert VALUE not in tap.text() and VALUE not in stderr and VALUE not in result.model_dump_json()
    completes = [json.loads(line) for line in tap.lines if "notifications/elicitation/complete" in line]
    assert completes and completes[0]["params"]["elicitationId"] == seen[0].elicitation_id


@pytest.mark.parametrize("mode", ["legacy", MODERN])
@pytest.mark.parametrize("action", ["decline", "cancel"])
async def test_decline_and_cancel_store_nothing(tmp_path: Path, action: str, mode: str) -> None:
    """Cancel ends the request. Decline offers the link flow instead (some hosts decline without
    asking the user); nothing is stored either way unless the user then uses the new link."""
    seen: list[types.ElicitRequestURLParams] = []

    async def handler(params: types.ElicitRequestURLParams) -> types.ElicitResult:
        return types.ElicitResult(action=action)  # type: ignore[arg-type]

    async with stdio_session(tmp_path, handler, seen, Tap(), mode=mode) as (client, _):
        result = await client.call_tool("store_credential", ARGS)
        late = await submit(seen[0].url)
    text = result.content[0].text  # type: ignore[union-attr]
    if action == "cancel":
        assert result.is_error is True and "cancelled" in text and "Nothing was stored" in text
    else:
        assert result.is_error is False and "declined" in text
        assert result.structured_content is not None
        assert result.structured_content["status"] == "awaiting_user_input"
        assert result.structured_content["input_url"] != seen[0].url
    assert late.status_code == 410
    assert stored_value(tmp_path / "s.db") is None


async def test_expiry_ends_the_call_cleanly(tmp_path: Path) -> None:
    seen: list[types.ElicitRequestURLParams] = []

    async def handler(params: types.ElicitRequestURLParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept")  # and nobody ever submits

    async with stdio_session(tmp_path, handler, seen, Tap(), DANUBE_MCP_SECURE_INPUT_TTL="1") as (client, _):
        result = await client.call_tool("store_credential", ARGS)
        late = await submit(seen[0].url)
    assert result.is_error is True and "expired" in result.content[0].text  # type: ignore[union-attr]
    assert late.status_code == 410
    assert stored_value(tmp_path / "s.db") is None


async def test_foreign_origin_and_bad_input_are_refused_then_a_good_submit_works(tmp_path: Path) -> None:
    seen: list[types.ElicitRequestURLParams] = []
    outcomes: dict[str, httpx2.Response] = {}

    async def handler(params: types.ElicitRequestURLParams) -> types.ElicitResult:
        async def later() -> None:
            outcomes["foreign"] = await submit(params.url, origin="http://evil.example")
            outcomes["null"] = await submit(params.url, origin="null")
            outcomes["empty"] = await submit(params.url, value="")
            outcomes["newline"] = await submit(params.url, value=VALUE + "\n")
            async with httpx2.AsyncClient() as hc:
                outcomes["put"] = await hc.put(params.url, content=b"credential_value=x")
                outcomes["json"] = await hc.post(params.url, json={"credential_value": VALUE})
            outcomes["good"] = await submit(params.url, origin=None)

        tg_holder["tg"].start_soon(later)
        return types.ElicitResult(action="accept")

    async with anyio.create_task_group() as tg:
        tg_holder["tg"] = tg
        async with stdio_session(tmp_path, handler, seen, Tap()) as (client, _):
            result = await client.call_tool("store_credential", ARGS)
    assert outcomes["foreign"].status_code == 403 and outcomes["null"].status_code == 403
    assert outcomes["empty"].status_code == 400 and outcomes["newline"].status_code == 400
    assert outcomes["put"].status_code == 405 and outcomes["json"].status_code == 415
    assert outcomes["good"].status_code == 200
    for response in outcomes.values():
        assert VALUE not in response.text
    assert result.is_error is False
    assert stored_value(tmp_path / "s.db") == VALUE


async def test_client_without_url_elicitation_gets_a_link(tmp_path: Path) -> None:
    async with stdio_session(tmp_path, None, [], Tap()) as (client, _):
        result = await client.call_tool("store_credential", ARGS)
        with_value = await client.call_tool("store_credential", {**ARGS, "credential_value": VALUE})
    assert result.is_error is False
    assert result.structured_content is not None
    assert result.structured_content["status"] == "awaiting_user_input"
    assert "/secure-input/" in result.content[0].text  # type: ignore[union-attr]
    assert with_value.is_error is False  # passing the value still works


async def test_a_2026_client_over_stdio_stores_through_multi_round_trip(tmp_path: Path) -> None:
    """2026-07-28 has no server-to-client request: the call answers input_required with a URL
    elicitation, the SDK client's driver opens it and retries, and the retry stores the value."""
    seen: list[types.ElicitRequestURLParams] = []
    pages: list[httpx2.Response] = []
    posts: list[httpx2.Response] = []
    tap = Tap()
    async with anyio.create_task_group() as tg:
        tg_holder["tg"] = tg
        async with stdio_session(
            tmp_path, accepting_and_submitting(pages, posts), seen, tap, mode=MODERN
        ) as (
            client,
            err,
        ):
            assert client.protocol_version == MODERN
            result = await client.call_tool("store_credential", ARGS)
            stderr = err.text()
    assert result.is_error is False, result
    assert result.structured_content is not None and result.structured_content["success"] is True
    assert seen[0].elicitation_id is None  # removed in 2026-07-28
    assert posts[0].status_code == 200 and "stored" in posts[0].text.lower()
    assert stored_value(tmp_path / "s.db") == VALUE
    # no server-to-client request in 2026: the URL request rides inside the tools/call result
    assert all(json.loads(line).get("method") != "elicitation/create" for line in tap.lines)
    assert '"input_required"' in tap.text() and "requestState" in tap.text()
    assert VALUE not in tap.text() and VALUE not in stderr


@asynccontextmanager
async def http_session(
    url: str, handler: Elicit | None, seen: list[Any], mode: str = "legacy"
) -> AsyncIterator[Client]:
    kw: dict[str, Any] = {}
    if handler is not None:
        kw["elicitation_callback"] = callback(handler, seen)
    async with mcp_http(
        f"{url}/mcp", mode=mode, headers={"authorization": f"Bearer {TOKEN}"}, **kw
    ) as client:
        yield client


async def test_over_streamable_http_the_page_is_served_by_the_app(tmp_path: Path) -> None:
    env = child_env(DANUBE_MCP_LOG_LEVEL="DEBUG", DANUBE_MCP_AUTH_TOKEN=TOKEN)
    args = ("--transport", "http", "--sandbox", "--sandbox-db", str(tmp_path / "s.db"), "--secure-input")
    seen: list[types.ElicitRequestURLParams] = []
    pages: list[httpx2.Response] = []
    posts: list[httpx2.Response] = []
    with http_server(env, args) as srv:
        async with anyio.create_task_group() as tg:
            tg_holder["tg"] = tg
            async with http_session(srv.url, accepting_and_submitting(pages, posts), seen) as client:
                result = await client.call_tool("store_credential", ARGS)
        stderr = srv.err.text()
    assert result.is_error is False, result
    assert seen[0].url.startswith(srv.url + "/secure-input/")
    assert pages[0].status_code == 200 and posts[0].status_code == 200  # no bearer token needed
    assert stored_value(tmp_path / "s.db") == VALUE
    assert VALUE not in stderr and TOKEN not in stderr


async def test_over_legacy_sse_the_page_works_too(tmp_path: Path) -> None:
    """SSE is initialize-era only, so there is no 2026 variant of this transport."""
    env = child_env(DANUBE_MCP_LOG_LEVEL="DEBUG", DANUBE_MCP_AUTH_TOKEN=TOKEN)
    args = ("--transport", "sse", "--sandbox", "--sandbox-db", str(tmp_path / "s.db"), "--secure-input")
    seen: list[types.ElicitRequestURLParams] = []
    pages: list[httpx2.Response] = []
    posts: list[httpx2.Response] = []
    with http_server(env, args) as srv:
        async with anyio.create_task_group() as tg:
            tg_holder["tg"] = tg
            async with mcp_sse(
                f"{srv.url}/sse",
                headers={"authorization": f"Bearer {TOKEN}"},
                elicitation_callback=callback(accepting_and_submitting(pages, posts), seen),
            ) as client:
                result = await client.call_tool("store_credential", ARGS)
        stderr = srv.err.text()
    assert result.is_error is False, result
    assert seen[0].url.startswith(srv.url + "/secure-input/")
    assert pages[0].status_code == 200 and posts[0].status_code == 200
    assert stored_value(tmp_path / "s.db") == VALUE
    assert VALUE not in stderr and TOKEN not in stderr and VALUE not in result.model_dump_json()


@pytest.mark.parametrize("extra", [(), ("--stateless",), ("--stateless", "--json-response")])
async def test_a_2026_client_over_streamable_http_stores_through_multi_round_trip(
    tmp_path: Path, extra: tuple[str, ...]
) -> None:
    """Also in JSON-response mode, where a plain 2026 call takes the short road (modern_fast.py)."""
    env = child_env(DANUBE_MCP_LOG_LEVEL="DEBUG", DANUBE_MCP_AUTH_TOKEN=TOKEN)
    transport = "streamable-http" if "--json-response" in extra else "http"
    args = (
        "--transport",
        transport,
        "--sandbox",
        "--sandbox-db",
        str(tmp_path / "s.db"),
        "--secure-input",
        *extra,
    )
    seen: list[types.ElicitRequestURLParams] = []
    pages: list[httpx2.Response] = []
    posts: list[httpx2.Response] = []
    with http_server(env, args) as srv:
        async with anyio.create_task_group() as tg:
            tg_holder["tg"] = tg
            async with http_session(
                srv.url, accepting_and_submitting(pages, posts), seen, mode=MODERN
            ) as client:
                assert client.protocol_version == MODERN
                result = await client.call_tool("store_credential", ARGS)
        stderr = srv.err.text()
    assert result.is_error is False, result
    assert seen[0].url.startswith(srv.url + "/secure-input/")
    assert pages[0].status_code == 200 and posts[0].status_code == 200
    assert stored_value(tmp_path / "s.db") == VALUE
    assert VALUE not in stderr + result.model_dump_json() and TOKEN not in stderr


async def test_stateless_legacy_http_has_no_back_channel_and_offers_a_link(tmp_path: Path) -> None:
    env = child_env(DANUBE_MCP_AUTH_TOKEN=TOKEN)
    args = (
        "--transport",
        "streamable-http",
        "--stateless",
        "--sandbox",
        "--sandbox-db",
        str(tmp_path / "s.db"),
    )
    seen: list[Any] = []

    async def handler(params: types.ElicitRequestURLParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept")

    with http_server(env, (*args, "--secure-input")) as srv:
        async with http_session(srv.url, handler, seen) as client:
            result = await client.call_tool("store_credential", ARGS)
    assert result.is_error is False and result.structured_content is not None
    assert result.structured_content["input_url"].startswith(srv.url + "/secure-input/")
    assert seen == []
    assert stored_value(tmp_path / "s.db") is None


def test_a_client_that_never_answers_is_bounded_by_the_links_lifetime(tmp_path: Path) -> None:
    """A client that receives elicitation/create and never replies: the call still ends when the
    link expires. (Raw JSON-RPC: the SDK client cannot take other messages while its callback waits.)"""
    from procs import raw_stdio

    env = child_env(DANUBE_MCP_SECURE_INPUT_TTL="1")
    args = ("--sandbox", "--sandbox-db", str(tmp_path / "s.db"), "--secure-input")
    with raw_stdio(env, args) as raw:
        raw.send(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {"elicitation": {"form": {}, "url": {}}},
                    "clientInfo": {"name": "silent", "version": "0"},
                },
            }
        )
        raw.recv_id(0)
        raw.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        call = {"name": "store_credential", "arguments": ARGS}
        raw.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call})
        elicit = raw.recv()
        assert elicit["method"] == "elicitation/create" and elicit["params"]["mode"] == "url"
        result = raw.recv_id(1, timeout=15)["result"]
    assert result["isError"] is True and "did not answer" in result["content"][0]["text"]
    assert stored_value(tmp_path / "s.db") is None


async def test_local_listener_refuses_foreign_host_headers(tmp_path: Path) -> None:
    seen: list[types.ElicitRequestURLParams] = []
    statuses: dict[str, int] = {}

    async def handler(params: types.ElicitRequestURLParams) -> types.ElicitResult:
        async with httpx2.AsyncClient() as hc:
            statuses["foreign"] = (await hc.get(params.url, headers={"host": "evil.example"})).status_code
            statuses["own"] = (await hc.get(params.url)).status_code
        return types.ElicitResult(action="decline")

    async with stdio_session(tmp_path, handler, seen, Tap()) as (client, _):
        await client.call_tool("store_credential", ARGS)
    assert statuses == {"foreign": 421, "own": 200}


async def test_pages_behind_a_tls_proxy_accept_the_public_origin() -> None:
    from danube_mcp.secure_input import SecureInputBroker

    broker = SecureInputBroker(ttl=30, public_url="https://mcp.example.com")
    entry, token = await broker.open_entry(
        SERVICE,
        "bearer",
        caller="local",
        flow="elicit",
        account="the Danube account of the API key ending in ...abcd",
    )
    url = await broker.url_for(token)
    assert url.startswith("https://mcp.example.com/secure-input/")
    transport = httpx2.ASGITransport(app=broker.app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://mcp.example.com") as hc:
        page = await hc.get(url.replace("https://mcp.example.com", ""))
        assert "ending in ...abcd" in page.text and "Only continue if you asked" in page.text

        async def store_when_submitted() -> None:
            assert await broker.store.wait_submitted(entry.entry_id, 10)
            assert await broker.store.take_value(entry.entry_id) == VALUE
            await broker.store.finish(entry.entry_id, True, "The credential was stored.")

        async with anyio.create_task_group() as tg:
            tg.start_soon(store_when_submitted)
            r = await hc.post(
                url.replace("https://mcp.example.com", ""),
                content=f"credential_value={VALUE}",
                headers={
                    "origin": "https://mcp.example.com",
                    "content-type": "application/x-www-form-urlencoded",
                },
            )
    assert r.status_code == 200 and VALUE not in r.text and "stored" in r.text
