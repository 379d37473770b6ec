"""Secure input for every host: the link flow (no URL elicitation), the sealed 2026 ``requestState``
and its abuse (tampered, replayed, expired, foreign, for another service), strict page decoding and
the per-caller limit. Real server processes over stdio and HTTP on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import types

from danube_mcp.sandbox import DEMO_API_KEY
from danube_mcp.secure_input.state import StateError, StateSealer
from procs import MODERN, child_env, http_server, mcp_http, mcp_sse
from test_secure_input import (
    ARGS,
    SERVICE,
    TOKEN,
    VALUE,
    Tap,
    accepting_and_submitting,
    callback,
    stdio_session,
    stored_value,
    submit,
    tg_holder,
)

pytestmark = pytest.mark.anyio

MODES = ["legacy", MODERN]


def text_of(result: Any) -> str:
    return str(result.content[0].text)


@asynccontextmanager
async def submitting(url: str) -> AsyncIterator[list[httpx2.Response]]:
    """POST the page in the background, as the user would while the client retries (in the
    2026 flow the page waits for the retry's outcome)."""
    done: list[httpx2.Response] = []

    async def post() -> None:
        done.append(await submit(url))

    async with anyio.create_task_group() as tg:
        tg.start_soon(post)
        yield done


async def page_status(url: str) -> int:
    async with httpx2.AsyncClient() as hc:
        return (await hc.get(url)).status_code


# -- the link flow ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_link_flow_over_stdio_stores_on_the_next_call(tmp_path: Path, mode: str) -> None:
    tap = Tap()
    async with stdio_session(tmp_path, None, [], tap, mode=mode) as (client, err):
        first = await client.call_tool("store_credential", ARGS)
        assert first.is_error is False and first.structured_content is not None
        url = first.structured_content["input_url"]
        assert first.structured_content["status"] == "awaiting_user_input"
        assert first.structured_content["success"] is False
        assert url in text_of(first) and "call store_credential again" in text_of(first)
        assert "paste" in text_of(first)  # tells the model not to ask for the secret in chat
        posted = await submit(url)
        assert posted.status_code == 200 and "Go back to your assistant" in posted.text
        second = await client.call_tool("store_credential", ARGS)
        reused = await submit(url)
        again = await client.call_tool("store_credential", ARGS)  # nothing pending: a new link
        stderr = err.text()
    assert second.is_error is False, second
    assert second.structured_content is not None and second.structured_content["success"] is True
    assert stored_value(tmp_path / "s.db") == VALUE
    assert reused.status_code == 410  # single use
    assert again.structured_content is not None and again.structured_content["input_url"] != url
    assert VALUE not in tap.text() and VALUE not in stderr


async def test_link_flow_before_the_user_entered_anything_says_what_to_do(tmp_path: Path) -> None:
    async with stdio_session(tmp_path, None, [], Tap()) as (client, _):
        first = await client.call_tool("store_credential", ARGS)
        assert first.structured_content is not None
        url = first.structured_content["input_url"]
        early = await client.call_tool("store_credential", ARGS)
        assert await page_status(url) == 200  # the early call did not spend the link
        await submit(url)
        done = await client.call_tool("store_credential", ARGS)
    assert early.is_error is False and early.structured_content is not None
    assert early.structured_content["status"] == "awaiting_user_input"
    assert "has not entered" in text_of(early) and "input_url" not in early.structured_content
    assert done.is_error is False and stored_value(tmp_path / "s.db") == VALUE


def http_args(tmp_path: Path, *extra: str) -> tuple[str, ...]:
    return (
        "--transport",
        "http",
        "--sandbox",
        "--sandbox-db",
        str(tmp_path / "s.db"),
        "--secure-input",
        *extra,
    )


@pytest.mark.parametrize(
    ("mode", "extra"), [("legacy", ()), (MODERN, ("--stateless",)), ("legacy", ("--stateless",))]
)
async def test_link_flow_over_http_is_bound_to_the_caller(
    tmp_path: Path, mode: str, extra: tuple[str, ...]
) -> None:
    """Two callers (different credentials on the connection) asking for the same service get
    different links, and neither call can store what was typed on the other's page."""
    env = child_env(DANUBE_MCP_LOG_LEVEL="DEBUG", DANUBE_MCP_AUTH_TOKEN=TOKEN)
    alice = {"authorization": f"Bearer {TOKEN}", "danube-api-key": DEMO_API_KEY}
    bob = {"authorization": f"Bearer {TOKEN}"}  # the server's key: a different caller
    with http_server(env, http_args(tmp_path, *extra)) as srv:
        async with (
            mcp_http(f"{srv.url}/mcp", mode=mode, headers=alice) as a,
            mcp_http(f"{srv.url}/mcp", mode=mode, headers=bob) as b,
        ):
            a_first = await a.call_tool("store_credential", ARGS)
            b_first = await b.call_tool("store_credential", ARGS)
            assert a_first.structured_content is not None and b_first.structured_content is not None
            a_url = a_first.structured_content["input_url"]
            assert a_url.startswith(srv.url + "/secure-input/")
            assert a_url != b_first.structured_content["input_url"]
            assert (await submit(a_url)).status_code == 200
            b_second = await b.call_tool("store_credential", ARGS)
            assert stored_value(tmp_path / "s.db") is None  # Bob's call did not take Alice's value
            a_second = await a.call_tool("store_credential", ARGS)
        stderr = srv.err.text()
    assert b_second.structured_content is not None
    assert b_second.structured_content["status"] == "awaiting_user_input"
    assert a_second.is_error is False and stored_value(tmp_path / "s.db") == VALUE
    assert VALUE not in stderr and DEMO_API_KEY not in stderr and TOKEN not in stderr
    assert a_url.rsplit("/", 1)[1] not in stderr  # the link's token is masked in the logs


# -- the page --------------------------------------------------------------------------------------


async def test_garbled_form_is_refused_and_does_not_spend_the_link(tmp_path: Path) -> None:
    async with stdio_session(tmp_path, None, [], Tap()) as (client, _):
        first = await client.call_tool("store_credential", ARGS)
        assert first.structured_content is not None
        url = first.structured_content["input_url"]
        origin = url.split("/secure-input/")[0]
        headers = {"content-type": "application/x-www-form-urlencoded", "origin": origin}
        async with httpx2.AsyncClient() as hc:
            bad = [
                await hc.post(url, content=body, headers=headers)
                for body in (
                    b"credential_value=ab%zzcd",
                    b"credential_value=%C3%28xyz",
                    b"credential_value=x%2",
                )
            ]
            dup = await hc.post(url, content=b"credential_value=a&credential_value=b", headers=headers)
        good = await submit(url)
        done = await client.call_tool("store_credential", ARGS)
    assert [r.status_code for r in bad] == [400, 400, 400] and dup.status_code == 400
    assert all("garbled" in r.text for r in bad)
    assert good.status_code == 200
    assert done.is_error is False and stored_value(tmp_path / "s.db") == VALUE


async def test_too_many_open_requests_per_caller_are_refused(tmp_path: Path) -> None:
    async with stdio_session(tmp_path, None, [], Tap()) as (client, _):
        results = [
            await client.call_tool("store_credential", {**ARGS, "service_id": f"svc_{i:03d}"})
            for i in range(21)
        ]
        with_value = await client.call_tool("store_credential", {**ARGS, "credential_value": VALUE})
    assert all(r.is_error is False for r in results[:20])
    assert results[20].is_error is True and "too many secure-input requests" in text_of(results[20])
    assert with_value.is_error is False  # a call with a value is not affected


# -- 2026-07-28: the sealed requestState ---------------------------------------------------------


async def first_round(client: Any, args: dict[str, Any] = ARGS) -> types.InputRequiredResult:
    result = await client.session.call_tool("store_credential", args, allow_input_required=True)
    assert isinstance(result, types.InputRequiredResult), result
    assert result.request_state and result.input_requests and "credential" in result.input_requests
    return result


ACCEPT = {"credential": types.ElicitResult(action="accept")}


async def _driven(params: types.ElicitRequestURLParams) -> types.ElicitResult:
    """Declares URL elicitation; never called, because these tests drive the rounds themselves."""
    raise AssertionError("the test drives the rounds itself")


async def test_request_state_tampered_replayed_or_for_another_service_is_refused(tmp_path: Path) -> None:
    tap = Tap()
    async with stdio_session(tmp_path, _driven, [], tap, mode=MODERN, DANUBE_MCP_SECURE_INPUT_TTL="60") as (
        client,
        err,
    ):
        first = await first_round(client)
        state = first.request_state
        assert state is not None
        url = first.input_requests["credential"].params.url  # type: ignore[index,union-attr]
        flipped = state[:-3] + ("A" if state[-3] != "A" else "B") + state[-2:]
        tampered = await client.session.call_tool(
            "store_credential", ARGS, input_responses=ACCEPT, request_state=flipped, allow_input_required=True
        )
        other = await client.session.call_tool(
            "store_credential",
            {**ARGS, "service_id": "svc_other"},
            input_responses=ACCEPT,
            request_state=state,
            allow_input_required=True,
        )
        # The refused attempts did not spend the state: the genuine retry stores.
        async with submitting(url) as page:
            stored = await client.session.call_tool(
                "store_credential", ARGS, input_responses=ACCEPT, request_state=state
            )
        assert page[0].status_code == 200 and "Stored" in page[0].text
        replay = await client.session.call_tool(
            "store_credential", ARGS, input_responses=ACCEPT, request_state=state
        )
        unanswered_state = (await first_round(client)).request_state
        unanswered = await client.session.call_tool("store_credential", ARGS, request_state=unanswered_state)
        stderr = err.text()
    assert isinstance(tampered, types.CallToolResult) and tampered.is_error is True
    assert "changed or was not issued" in text_of(tampered)
    assert isinstance(other, types.CallToolResult) and other.is_error is True
    assert "different service_id" in text_of(other)
    assert stored.is_error is False and stored_value(tmp_path / "s.db") == VALUE
    assert replay.is_error is True and "already used" in text_of(replay)
    assert unanswered.is_error is True and "no answer" in text_of(unanswered)
    assert VALUE not in tap.text() + stderr


async def test_a_retry_before_the_page_was_used_waits_then_stores(tmp_path: Path) -> None:
    """A retry that arrives before the user typed anything gets a fresh state-only input_required
    (the client waits and retries); the retry after the page was used stores."""
    async with stdio_session(tmp_path, _driven, [], Tap(), mode=MODERN, DANUBE_MCP_SECURE_INPUT_TTL="16") as (
        client,
        _,
    ):
        first = await first_round(client)
        url = first.input_requests["credential"].params.url  # type: ignore[index,union-attr]
        waiting = await client.session.call_tool(
            "store_credential",
            ARGS,
            input_responses=ACCEPT,
            request_state=first.request_state,
            allow_input_required=True,
        )
        assert isinstance(waiting, types.InputRequiredResult)
        assert not waiting.input_requests and waiting.request_state not in (None, first.request_state)
        async with submitting(url) as page:
            done = await client.session.call_tool(
                "store_credential", ARGS, request_state=waiting.request_state
            )
        assert page[0].status_code == 200
    assert done.is_error is False, done
    assert stored_value(tmp_path / "s.db") == VALUE


async def test_request_state_from_another_caller_is_refused(tmp_path: Path) -> None:
    env = child_env(DANUBE_MCP_AUTH_TOKEN=TOKEN)
    alice = {"authorization": f"Bearer {TOKEN}", "danube-api-key": DEMO_API_KEY}
    bob = {"authorization": f"Bearer {TOKEN}"}
    with http_server(env, http_args(tmp_path, "--stateless")) as srv:
        async with mcp_http(f"{srv.url}/mcp", mode=MODERN, headers=alice, elicitation_callback=_never) as a:
            first = await first_round(a)
            url = first.input_requests["credential"].params.url  # type: ignore[index,union-attr]
        async with mcp_http(f"{srv.url}/mcp", mode=MODERN, headers=bob, elicitation_callback=_never) as b:
            async with submitting(url) as page:
                stolen = await b.session.call_tool(
                    "store_credential", ARGS, input_responses=ACCEPT, request_state=first.request_state
                )
            assert page[0].status_code == 200  # received; nobody may finish it but Alice
    assert stolen.is_error is True and "another caller" in text_of(stolen)
    assert stored_value(tmp_path / "s.db") is None


async def _never(ctx: Any, params: Any) -> types.ElicitResult:
    raise AssertionError("the test drives the rounds itself")


async def test_request_state_after_expiry_is_refused(tmp_path: Path) -> None:
    async with stdio_session(tmp_path, _driven, [], Tap(), mode=MODERN, DANUBE_MCP_SECURE_INPUT_TTL="2") as (
        client,
        _,
    ):
        first = await first_round(client)
        url = first.input_requests["credential"].params.url  # type: ignore[index,union-attr]
        deadline = time.monotonic() + 15
        while await page_status(url) != 410:  # wait for the link to expire (a condition, bounded)
            assert time.monotonic() < deadline
            await anyio.sleep(0.2)
        late = await client.session.call_tool(
            "store_credential", ARGS, input_responses=ACCEPT, request_state=first.request_state
        )
    assert late.is_error is True and "expired" in text_of(late)
    assert stored_value(tmp_path / "s.db") is None


def test_sealed_state_holds_nothing_readable_and_checks_expiry_and_key() -> None:
    sealer = StateSealer()
    fields: dict[str, Any] = {
        "entry_id": "e1",
        "service_id": SERVICE,
        "credential_type": "bearer",
        "caller": "c1",
        "expires_at": time.time() + 60,
        "phase": "ask",
    }
    state = sealer.seal(**fields)
    opened = sealer.open(state)
    assert (opened.entry_id, opened.service_id, opened.caller, opened.phase) == ("e1", SERVICE, "c1", "ask")
    assert SERVICE not in state and "c1" not in state  # sealed, not just signed
    with pytest.raises(StateError, match="expired"):
        sealer.open(state, now=time.time() + 61)
    with pytest.raises(StateError, match="not issued"):
        StateSealer().open(state)  # another server's key
    with pytest.raises(StateError, match="not issued"):
        sealer.open("x" * 5000)
    assert sealer.seal(**fields) != sealer.seal(**fields)  # each round's own single-use id and nonce


# -- races, cancellation and lifetimes ---------------------------------------------------------


async def test_a_typed_value_is_dropped_at_expiry_even_when_nothing_else_happens() -> None:
    from danube_mcp.secure_input.store import Entry, MemoryStore

    store = MemoryStore()
    entry = Entry("e1", SERVICE, "bearer", "c1", "mrtr", expires_at=time.time() + 0.3)
    await store.put(entry, "t" * 43)
    assert await store.submit("e1", VALUE)
    finished = await store.wait_finished("e1", 10)  # woken by the store's own timer
    assert finished is not None and finished.ok is False and "expired" in finished.outcome
    assert all(slot.value is None for slot in store._slots.values())
    assert await store.take_value("e1") is None


async def test_a_link_value_typed_just_in_time_waits_for_the_next_call(tmp_path: Path) -> None:
    async with stdio_session(tmp_path, None, [], Tap(), DANUBE_MCP_SECURE_INPUT_TTL="2") as (client, _):
        first = await client.call_tool("store_credential", ARGS)
        assert first.structured_content is not None
        posted = await submit(first.structured_content["input_url"])
        deadline = time.time() + first.structured_content["expires_in_seconds"] + 1.5
        while time.time() < deadline:  # let the link's own lifetime pass (a wall-clock condition)
            await anyio.sleep(0.25)
        second = await client.call_tool("store_credential", ARGS)
    assert posted.status_code == 200 and "minute" in posted.text  # the page says until when
    assert second.is_error is False, second
    assert stored_value(tmp_path / "s.db") == VALUE


async def test_two_concurrent_link_checks_store_once_and_both_say_so(tmp_path: Path) -> None:
    async with stdio_session(tmp_path, None, [], Tap()) as (client, _):
        first = await client.call_tool("store_credential", ARGS)
        assert first.structured_content is not None
        await submit(first.structured_content["input_url"])
        results: list[Any] = []

        async def check() -> None:
            results.append(await client.call_tool("store_credential", ARGS))

        async with anyio.create_task_group() as tg:
            tg.start_soon(check)
            tg.start_soon(check)
    stored = [r for r in results if r.structured_content and r.structured_content["success"] is True]
    other = [r for r in results if r not in stored]
    assert len(stored) == 1 and len(other) == 1, results
    # The other call either saw the first one storing, or came after it and got a fresh link:
    # never a false "nothing was stored".
    assert (
        "Another call" in text_of(other[0]) or other[0].structured_content["status"] == "awaiting_user_input"
    )
    assert "Nothing was stored" not in text_of(other[0])
    assert stored_value(tmp_path / "s.db") == VALUE


async def test_a_cancelled_retry_closes_its_page(tmp_path: Path) -> None:
    async with stdio_session(tmp_path, _driven, [], Tap(), mode=MODERN, DANUBE_MCP_SECURE_INPUT_TTL="60") as (
        client,
        _,
    ):
        first = await first_round(client)
        url = first.input_requests["credential"].params.url  # type: ignore[index,union-attr]
        with anyio.move_on_after(1):  # the client gives up while the retry waits for the page
            await client.session.call_tool(
                "store_credential", ARGS, input_responses=ACCEPT, request_state=first.request_state
            )
        deadline = time.monotonic() + 15
        while await page_status(url) != 410:  # the server closes the entry when it sees the cancel
            assert time.monotonic() < deadline, "the page stayed open after its retry was cancelled"
            await anyio.sleep(0.1)
        late = await submit(url)
    assert late.status_code == 410
    assert stored_value(tmp_path / "s.db") is None


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_two_sessions_with_the_same_credentials_do_not_share_links(
    tmp_path: Path, transport: str
) -> None:
    # Streamable HTTP names its session in a header, legacy SSE in the /messages/ query string.
    env = child_env(DANUBE_MCP_AUTH_TOKEN=TOKEN)
    team = {"authorization": f"Bearer {TOKEN}"}
    connect = (
        (lambda url: mcp_http(f"{url}/mcp", headers=team))
        if transport != "sse"
        else (lambda url: mcp_sse(f"{url}/sse", headers=team))
    )
    with http_server(env, http_args(tmp_path)) as srv:
        async with connect(srv.url) as a, connect(srv.url) as b:
            a_first = await a.call_tool("store_credential", ARGS)
            b_first = await b.call_tool("store_credential", ARGS)
            assert a_first.structured_content is not None and b_first.structured_content is not None
            assert a_first.structured_content["input_url"] != b_first.structured_content["input_url"]
            await submit(a_first.structured_content["input_url"])
            b_second = await b.call_tool("store_credential", ARGS)
            assert stored_value(tmp_path / "s.db") is None
            a_second = await a.call_tool("store_credential", ARGS)
    assert b_second.structured_content is not None and b_second.structured_content["success"] is False
    assert a_second.is_error is False and stored_value(tmp_path / "s.db") == VALUE


@pytest.mark.parametrize("mode", MODES)
async def test_the_value_reaches_danube_once_with_the_callers_key(tmp_path: Path, mode: str) -> None:
    """Against a recording stand-in for Danube: the 2026 round trip (or, in the initialize era over
    stateful HTTP, the live elicitation) sends exactly one store, with the caller's own key, and
    the value appears in no MCP message and no log line at DEBUG."""
    from upstream import FakeUpstream

    caller_key = "dk_CANARY_callers_own_key_7777"
    with FakeUpstream() as up:
        env = child_env(DANUBE_API_URL=up.url, DANUBE_MCP_AUTH_TOKEN=TOKEN, DANUBE_MCP_LOG_LEVEL="DEBUG")
        args = ("--transport", "streamable-http", "--secure-input", "--require-client-key")
        headers = {"authorization": f"Bearer {TOKEN}", "danube-api-key": caller_key}
        seen: list[types.ElicitRequestURLParams] = []
        pages: list[httpx2.Response] = []
        posts: list[httpx2.Response] = []
        with http_server(env, args) as srv:
            async with anyio.create_task_group() as tg:
                tg_holder["tg"] = tg
                handler = callback(accepting_and_submitting(pages, posts), seen)
                async with mcp_http(
                    f"{srv.url}/mcp", mode=mode, headers=headers, elicitation_callback=handler
                ) as c:
                    result = await c.call_tool("store_credential", ARGS)
            stderr = srv.err.text()
        stores = [r for r in up.requests if r.path == "/v1/credentials/store"]
    assert result.is_error is False, result
    assert len(stores) == 1
    assert stores[0].headers["danube-api-key"] == caller_key
    assert stores[0].json()["credential_value"] == VALUE and stores[0].json()["service_id"] == SERVICE
    assert VALUE not in stderr and caller_key not in stderr and VALUE not in result.model_dump_json()
