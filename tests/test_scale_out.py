"""Scale-out: pending secure input shared through Redis by several server processes (issue 13).

A real ``redis-server`` (Debian's package) on 127.0.0.1 with a random port, real server processes
behind a small round-robin proxy written here, real SDK clients. The store is first exercised on
its own (atomicity, caps, encryption, expiry, Redis going away), then end to end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import redis
from mcp import Client, types
from mcp.client import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client

from danube_mcp.secure_input.redis_store import RedisStore
from danube_mcp.secure_input.shared import SharedState, derive_keys, resolve_shared_state
from danube_mcp.secure_input.store import (
    LINK_SUBMIT_GRACE,
    Entry,
    MemoryStore,
    StoreUnavailable,
    TooManyPending,
)
from lb_proxy import RoutingProxy
from procs import MODERN, REPO, Captured, HttpServer, child_env, modern_meta
from redis_proc import RedisServer, free_port, redis_server
from upstream import FakeUpstream

pytestmark = pytest.mark.anyio

VALUE = "sk-CANARY-scaled-out-value-4242424242"
API_KEY = "dk-CANARY-server-api-key-5151515151"
TOKEN = "tok-CANARY-access-token-6161616161"
SECRET = "state-secret-CANARY-0123456789abcdefghijklmnopqrstuvwxyz"
SERVICE = "svc_openai_001"
ARGS = {"service_id": SERVICE, "credential_type": "bearer"}
VALUE_KEY = derive_keys(SECRET.encode())[0]


@pytest.fixture
def rds(tmp_path: Path) -> Iterator[RedisServer]:
    folder = tmp_path / "redis"
    folder.mkdir()
    with redis_server(folder) as server:
        yield server


def entry(entry_id: str, caller: str = "caller-a", ttl: float = 60.0, flow: Any = "mrtr") -> Entry:
    return Entry(
        entry_id=entry_id,
        service_id=SERVICE,
        credential_type="bearer",
        caller=caller,
        flow=flow,
        expires_at=time.time() + ttl,
        account="the Danube account of the API key ending in ...5151",
    )


def forms(secret: str) -> list[bytes]:
    """A secret as raw bytes, base64 (both alphabets, unpadded too) and hex."""
    raw = secret.encode()
    b64 = base64.b64encode(raw)
    return [
        raw,
        b64,
        b64.rstrip(b"="),
        base64.urlsafe_b64encode(raw).rstrip(b"="),
        raw.hex().encode(),
        raw.hex().upper().encode(),
    ]


def redis_dump(url: str) -> bytes:
    """Every key and every value in Redis, of every type, as one blob to search."""
    client = redis.Redis.from_url(url)
    parts: list[bytes] = []
    try:
        for key in client.scan_iter(count=1000):
            parts.append(key)
            kind = client.type(key)
            if kind == b"string":
                parts.append(client.get(key) or b"")
            elif kind == b"hash":
                for k, v in client.hgetall(key).items():
                    parts += [k, v]
            elif kind == b"zset":
                parts += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
            elif kind == b"list":
                parts += client.lrange(key, 0, -1)
            elif kind == b"set":
                parts += list(client.smembers(key))
            else:
                parts.append(kind)
    finally:
        client.close()
    return b"\n".join(parts)


def assert_absent(blob: bytes, *secrets: str) -> None:
    for secret in secrets:
        for form in forms(secret):
            assert form not in blob, f"a form of {secret[:12]}... is in Redis"


def keys_without_ttl(url: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return [key for key in client.scan_iter() if client.pttl(key) < 0]
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# The store on its own


async def test_an_entry_lives_its_life_atomically_and_redis_never_holds_a_secret(rds: RedisServer) -> None:
    a = RedisStore(rds.url, value_key=VALUE_KEY)
    b = RedisStore(rds.url, value_key=VALUE_KEY)  # a second process, as far as Redis can tell
    token = "Tok3n-CANARY-link-token-abcdefghijklmnop"
    try:
        await a.put(entry("e1"), token)
        found = await b.by_token(token)
        assert found is not None and found.entry_id == "e1" and found.status == "open"
        assert found.account.endswith("...5151") and found.caller == "caller-a"
        assert await b.by_token("not-the-token-abcdefghijklmnop") is None
        assert keys_without_ttl(rds.url) == []

        results = await asyncio.gather(*(s.submit("e1", VALUE) for s in (a, b, a, b)))
        assert results.count(True) == 1  # exactly one submission wins
        assert await a.wait_submitted("e1", 5.0) is True
        blob = redis_dump(rds.url)
        assert_absent(blob, VALUE, token, API_KEY)
        assert b"svc_openai_001" not in blob and b"5151" not in blob  # details are encrypted too
        assert keys_without_ttl(rds.url) == []

        taken = await asyncio.gather(*(s.take_value("e1") for s in (a, b, a, b)))
        assert taken.count(VALUE) == 1 and taken.count(None) == 3  # handed over exactly once
        client = redis.Redis.from_url(rds.url)
        assert client.exists("danube-mcp:v:e1") == 0  # the value is gone from Redis
        await b.finish("e1", True, "The credential was stored.")
        done = await a.wait_finished("e1", 5.0)
        assert done is not None and done.ok and done.outcome == "The credential was stored."
        assert 0 < client.pttl("danube-mcp:e:e1") <= 120_000  # kept briefly for the waiting page
        client.close()
        assert_absent(redis_dump(rds.url), VALUE, token)
    finally:
        await a.aclose()
        await b.aclose()


async def test_waits_see_what_another_process_did(rds: RedisServer) -> None:
    a = RedisStore(rds.url, value_key=VALUE_KEY)
    b = RedisStore(rds.url, value_key=VALUE_KEY)
    try:
        await a.put(entry("w1"), "token-w1-abcdefghijklmnopqrstuvwxyz")
        assert await a.wait_submitted("w1", 0.2) is False  # nothing yet: bounded wait

        async def later() -> None:
            assert await b.submit("w1", VALUE)

        async with anyio.create_task_group() as tg:
            tg.start_soon(later)
            assert await a.wait_submitted("w1", 10.0) is True
        assert await a.wait_finished("w1", 0.2) is None

        async with anyio.create_task_group() as tg:
            tg.start_soon(b.discard, "w1", "cancelled")
            done = await a.wait_finished("w1", 10.0)
        assert done is not None and done.ok is False and done.outcome == "cancelled"
        assert await a.take_value("w1") is None  # discarding dropped the value
    finally:
        await a.aclose()
        await b.aclose()


@pytest.fixture(params=["memory", "redis"])
def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """The same contract on both stores: for Redis two clients (two processes, as far as Redis can
    tell), for memory one store seen twice."""
    if request.param == "memory":
        store = MemoryStore()
        yield store, store
        return
    folder = tmp_path / "redis-contract"
    folder.mkdir()
    with redis_server(folder) as server:
        yield RedisStore(server.url, value_key=VALUE_KEY), RedisStore(server.url, value_key=VALUE_KEY)


async def test_store_contract_discard_leaves_a_taken_value_to_the_call_that_took_it(
    two_stores: tuple[Any, Any],
) -> None:
    a, b = two_stores
    try:
        await a.put(entry("d1"), "token-d1-abcdefghijklmnopqrstuvwxyz")
        assert await b.submit("d1", VALUE)
        assert await a.take_value("d1") == VALUE
        await b.discard("d1", "cancelled elsewhere")  # another call's clean-up: not ours to close
        taken = await a.get("d1")
        assert taken is not None and taken.status == "taken"
        await a.finish("d1", True, "The credential was stored.")
        await b.discard("d1", "too late")  # a finished entry keeps its outcome
        done = await b.get("d1")
        assert done is not None and done.status == "finished" and done.ok and done.outcome.endswith("stored.")
        await a.put(entry("d2"), "token-d2-abcdefghijklmnopqrstuvwxyz")
        await b.discard("d2", "declined")  # an open entry is closed by discard
        closed = await a.get("d2")
        assert closed is not None and closed.status == "finished" and closed.outcome == "declined"
        assert await a.submit("d2", VALUE) is False
    finally:
        await a.aclose()
        await b.aclose()


async def test_store_contract_a_link_value_typed_in_time_gets_the_grace(two_stores: tuple[Any, Any]) -> None:
    a, b = two_stores
    try:
        await a.put(entry("g1", ttl=30, flow="link"), "token-g1-abcdefghijklmnopqrstuvwxyz")
        await a.put(entry("g2", ttl=30, flow="mrtr"), "token-g2-abcdefghijklmnopqrstuvwxyz")
        before = time.time()
        assert await b.submit("g1", VALUE) and await b.submit("g2", VALUE)
        link, mrtr = await a.get("g1"), await a.get("g2")
        assert link is not None and link.status == "submitted"
        assert link.expires_at >= before + LINK_SUBMIT_GRACE - 1  # moved out to the grace
        assert mrtr is not None and mrtr.expires_at <= before + 31  # other flows keep their expiry
        if isinstance(a, RedisStore):  # the sealed value, the entry and its token key move with it
            client = redis.Redis.from_url(a._url)
            try:
                assert client.pttl("danube-mcp:v:g1") > 60_000 >= client.pttl("danube-mcp:v:g2")
                assert client.pttl("danube-mcp:e:g1") > (LINK_SUBMIT_GRACE + 60) * 1000
                assert keys_without_ttl(a._url) == []
            finally:
                client.close()
        assert await a.take_value("g1") == VALUE
    finally:
        await a.aclose()
        await b.aclose()


async def test_single_use_marks_and_link_names_are_global(rds: RedisServer) -> None:
    stores = [RedisStore(rds.url, value_key=VALUE_KEY) for _ in range(3)]
    try:
        claims = await asyncio.gather(*(s.claim("rs:once-1", 30) for s in stores * 3))
        assert claims.count(True) == 1
        await stores[0].set_link("name-1", "e9", 30)
        assert await stores[1].get_link("name-1") == "e9"
        await stores[2].clear_link("name-1", "other")  # not ours: kept
        assert await stores[1].get_link("name-1") == "e9"
        await stores[2].clear_link("name-1", "e9")
        assert await stores[0].get_link("name-1") is None
        assert keys_without_ttl(rds.url) == []
    finally:
        for s in stores:
            await s.aclose()


async def test_caps_per_caller_and_in_total_are_global(rds: RedisServer) -> None:
    a = RedisStore(rds.url, value_key=VALUE_KEY, max_per_caller=2, max_total=3)
    b = RedisStore(rds.url, value_key=VALUE_KEY, max_per_caller=2, max_total=3)
    try:
        await a.put(entry("c1"), "token-c1-abcdefghijklmnopqrstuvwxyz")
        await b.put(entry("c2"), "token-c2-abcdefghijklmnopqrstuvwxyz")
        with pytest.raises(TooManyPending, match="for this caller"):
            await a.put(entry("c3"), "token-c3-abcdefghijklmnopqrstuvwxyz")
        await a.put(entry("c4", caller="caller-b"), "token-c4-abcdefghijklmnopqrstuvwxyz")
        with pytest.raises(TooManyPending, match="on this server"):
            await b.put(entry("c5", caller="caller-c"), "token-c5-abcdefghijklmnopqrstuvwxyz")
        await b.finish("c1", False, "done")  # a finished entry no longer counts
        await b.put(entry("c6"), "token-c6-abcdefghijklmnopqrstuvwxyz")
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_value_is_bound_to_its_entry_and_to_the_shared_key(rds: RedisServer) -> None:
    a = RedisStore(rds.url, value_key=VALUE_KEY)
    stranger = RedisStore(rds.url, value_key=derive_keys(b"another-secret-" * 4)[0])
    client = redis.Redis.from_url(rds.url)
    try:
        for eid in ("b1", "b2"):
            await a.put(entry(eid), f"token-{eid}-abcdefghijklmnopqrstuvwxyz")
        assert await a.submit("b1", VALUE)
        assert await a.submit("b2", "the-other-value-abcdefgh")
        # Moving one entry's ciphertext to another entry does not move the value.
        client.set("danube-mcp:v:b2", client.get("danube-mcp:v:b1") or b"", keepttl=True)
        assert await a.take_value("b2") is None
        # A replica with a different key cannot read the entry nor the value.
        assert await stranger.get("b1") is None
        assert await stranger.take_value("b1") is None
    finally:
        client.close()
        await a.aclose()
        await stranger.aclose()


async def test_entries_and_values_expire_with_their_ttl(rds: RedisServer) -> None:
    store = RedisStore(rds.url, value_key=VALUE_KEY)
    client = redis.Redis.from_url(rds.url)
    try:
        await store.put(entry("x1", ttl=0.5), "token-x1-abcdefghijklmnopqrstuvwxyz")
        assert await store.submit("x1", VALUE)
        deadline = time.monotonic() + 10
        while client.exists("danube-mcp:v:x1") and time.monotonic() < deadline:
            await anyio.sleep(0.05)  # waiting for Redis to expire the key, with a deadline
        assert client.exists("danube-mcp:v:x1") == 0  # the value is gone at the TTL
        found = await store.get("x1")
        assert found is not None and found.status == "finished" and "expired" in found.outcome
        assert await store.take_value("x1") is None
        assert await store.submit("x1", VALUE) is False
    finally:
        client.close()
        await store.aclose()


async def test_redis_lost_is_a_clean_error_and_the_store_reconnects(rds: RedisServer) -> None:
    store = RedisStore(rds.url, value_key=VALUE_KEY, timeout=1.0)
    try:
        await store.put(entry("r1"), "token-r1-abcdefghijklmnopqrstuvwxyz")
        rds.kill()
        for op in (
            lambda: store.submit("r1", VALUE),
            lambda: store.get("r1"),
            lambda: store.claim("m", 5),
            lambda: store.put(entry("r2"), "token-r2-abcdefghijklmnopqrstuvwxyz"),
        ):
            with pytest.raises(StoreUnavailable) as caught:
                await op()
            text = str(caught.value)
            assert f"127.0.0.1:{rds.port}" in text and "failed to" in text
            assert VALUE not in text and "token-r" not in text
        rds.start()  # same port; Redis lost everything (no persistence)
        assert await store.get("r1") is None
        await store.put(entry("r3"), "token-r3-abcdefghijklmnopqrstuvwxyz")
        assert await store.submit("r3", VALUE)
        assert await store.take_value("r3") == VALUE
    finally:
        await store.aclose()


# --------------------------------------------------------------------------------------------
# Several server processes behind a load balancer


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "state.key"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


class Replica(HttpServer):
    """A server process started without waiting, so several start side by side."""

    def __init__(self, env: dict[str, str], args: tuple[str, ...]) -> None:
        super().__init__(env, args, wait=False)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def stop(self, timeout: float = 10.0) -> int:
        code = super().stop(timeout)
        if self.proc.stdout:
            self.proc.stdout.close()
        return code


def server_env(up: FakeUpstream, rds: RedisServer, key_file: Path, **extra: str) -> dict[str, str]:
    return child_env(
        DANUBE_API_KEY=API_KEY,
        DANUBE_API_URL=up.url,
        DANUBE_MCP_AUTH_TOKEN=TOKEN,
        DANUBE_MCP_STATE_URL=rds.url,
        DANUBE_MCP_STATE_KEY_FILE=str(key_file),
        DANUBE_MCP_LOG_LEVEL="DEBUG",
        **extra,
    )


SERVER_ARGS = ("--transport", "streamable-http", "--secure-input")


@contextmanager
def cluster(n: int, env: dict[str, str]) -> Iterator[tuple[list[Replica], RoutingProxy]]:
    """``n`` server processes (started together) behind one routing proxy."""
    replicas = [Replica(env, SERVER_ARGS) for _ in range(n)]
    try:
        for replica in replicas:
            replica.wait()
        with RoutingProxy([r.address for r in replicas]) as proxy:
            yield replicas, proxy
    finally:
        for replica in replicas:
            replica.stop()


def no_reuse_client(**kw: Any) -> httpx2.AsyncClient:
    """One request per connection, so the proxy routes every request on its own."""
    return httpx2.AsyncClient(
        limits=httpx2.Limits(max_keepalive_connections=0), timeout=httpx2.Timeout(30, read=60), **kw
    )


@asynccontextmanager
async def sdk_client(proxy: RoutingProxy, callback: Any = None, mode: str = MODERN) -> AsyncIterator[Client]:
    kw: dict[str, Any] = {}
    if callback is not None:
        kw["elicitation_callback"] = callback
    async with no_reuse_client(headers={"authorization": f"Bearer {TOKEN}"}) as http:
        transport = streamable_http_client(f"{proxy.url}/mcp", http_client=http)
        async with Client(transport, mode=mode, **kw) as client:
            yield client


async def post_page(url: str, value: str = VALUE) -> httpx2.Response:
    origin = re.match(r"https?://[^/]+", url)
    assert origin is not None
    async with no_reuse_client() as hc:
        return await hc.post(
            url,
            content="credential_value=" + httpx2.QueryParams({"v": value})["v"],
            headers={"content-type": "application/x-www-form-urlencoded", "origin": origin.group(0)},
        )


def stored_values(up: FakeUpstream) -> list[tuple[str, str]]:
    return [(r.json()["credential_value"], r.headers.get("danube-api-key", "")) for r in up.requests]


def all_stderr(replicas: list[Replica]) -> str:
    return "\n".join(r.err.text() for r in replicas)


@pytest.mark.parametrize("n", [2, pytest.param(3, marks=pytest.mark.load)])
async def test_2026_secure_input_with_every_step_on_another_process(
    n: int, rds: RedisServer, up: FakeUpstream, key_file: Path
) -> None:
    pages: list[httpx2.Response] = []
    posts: list[httpx2.Response] = []
    urls: list[str] = []
    with cluster(n, server_env(up, rds, key_file)) as (replicas, proxy):
        # the call on 0, the page GET on 1, the page POST on 2 (0 with two), the retry on 1
        proxy.plan = {"call": list(range(n)), "page-get": [1], "page-post": [2 % n]}
        async with anyio.create_task_group() as tg:

            async def accept(ctx: ClientRequestContext, params: Any) -> types.ElicitResult:
                assert isinstance(params, types.ElicitRequestURLParams)
                urls.append(params.url)
                async with no_reuse_client() as hc:
                    pages.append(await hc.get(params.url))

                async def later() -> None:
                    posts.append(await post_page(params.url))

                tg.start_soon(later)
                return types.ElicitResult(action="accept")

            async with sdk_client(proxy, accept) as client:
                result = await client.call_tool("store_credential", ARGS)
        stderr = all_stderr(replicas)
        calls, gets, page_posts = proxy.kinds("call"), proxy.kinds("page-get"), proxy.kinds("page-post")
        blob = redis_dump(rds.url)
    assert result.is_error is False, result
    assert calls[:2] == [0, 1] and gets == [1] and page_posts == [2 % n]
    assert pages[0].status_code == 200 and posts[0].status_code == 200 and "Stored" in posts[0].text
    assert urls[0].startswith(proxy.url + "/secure-input/")
    assert stored_values(up) == [(VALUE, API_KEY)]
    token = urls[0].rsplit("/", 1)[1]
    assert_absent(blob, VALUE, API_KEY, TOKEN, token)
    for secret in (VALUE, API_KEY, TOKEN, token):
        assert secret not in stderr


async def test_a_legacy_session_needs_affinity_only_for_itself_not_for_its_pages(
    rds: RedisServer, up: FakeUpstream, key_file: Path
) -> None:
    """Initialize era: the session's requests stay on one process (as a load balancer with
    affinity by Mcp-Session-Id does), while the page it sends the user to is served elsewhere."""
    posts: list[httpx2.Response] = []
    with cluster(2, server_env(up, rds, key_file)) as (_replicas, proxy):
        proxy.plan = {"call": [0], "mcp": [0], "page-get": [1], "page-post": [1]}
        async with anyio.create_task_group() as tg:

            async def accept(ctx: ClientRequestContext, params: Any) -> types.ElicitResult:
                assert isinstance(params, types.ElicitRequestURLParams)

                async def later() -> None:
                    posts.append(await post_page(params.url))

                tg.start_soon(later)
                return types.ElicitResult(action="accept")

            async with sdk_client(proxy, accept, mode="legacy") as client:
                result = await client.call_tool("store_credential", ARGS)
    assert result.is_error is False, result
    assert posts[0].status_code == 200 and "Stored" in posts[0].text
    assert set(proxy.kinds("mcp") + proxy.kinds("call")) == {0} and proxy.kinds("page-post") == [1]
    assert stored_values(up) == [(VALUE, API_KEY)]


@pytest.mark.load
async def test_link_flow_across_processes_survives_the_issuer_being_killed(
    rds: RedisServer, up: FakeUpstream, key_file: Path
) -> None:
    with cluster(3, server_env(up, rds, key_file)) as (replicas, proxy):
        proxy.plan = {"call": [0, 1, 2], "page-get": [1], "page-post": [2]}
        async with sdk_client(proxy) as client:  # no elicitation callback: the link flow
            first = await client.call_tool("store_credential", ARGS)
            assert first.is_error is False and first.structured_content is not None
            assert first.structured_content["status"] == "awaiting_user_input"
            url = first.structured_content["input_url"]
            token = url.rsplit("/", 1)[1]
            async with no_reuse_client() as hc:
                assert (await hc.get(url)).status_code == 200  # on 1
            posted = await post_page(url)  # on 2
            assert posted.status_code == 200, posted.text

            # The value waits in Redis, sealed: nothing readable there, in memory or on disk.
            blob = redis_dump(rds.url)
            assert_absent(blob, VALUE, API_KEY, TOKEN, token)
            assert b"danube-mcp:v:" in blob  # the sealed value is there
            saver = redis.Redis.from_url(rds.url)
            saver.save()
            saver.close()
            assert_absent((rds.folder / "dump.rdb").read_bytes(), VALUE, API_KEY, TOKEN, token)

            replicas[0].proc.kill()  # kill -9 the process that issued the link
            replicas[0].proc.wait(10)
            proxy.plan["call"] = [1]
            second = await client.call_tool("store_credential", ARGS)  # on 1
            assert second.is_error is False, second
            assert second.structured_content is not None and second.structured_content["success"] is True

            # The link was used once, everywhere: every replica refuses it now.
            proxy.plan = {"call": [1, 2], "page-get": [1, 2], "page-post": [2, 1]}
            for _ in range(2):
                assert (await post_page(url)).status_code == 410
                async with no_reuse_client() as hc:
                    assert (await hc.get(url)).status_code == 410
            third = await client.call_tool("store_credential", ARGS)  # no pending link: a new one
            assert third.structured_content is not None
            assert third.structured_content["status"] == "awaiting_user_input"
        assert proxy.kinds("call")[:2] == [0, 1] and proxy.kinds("page-post")[0] == 2
        stderr = all_stderr(replicas)
        blob = redis_dump(rds.url)
    assert stored_values(up) == [(VALUE, API_KEY)]  # stored exactly once
    assert_absent(blob, VALUE, API_KEY, TOKEN, token)
    assert b"danube-mcp:v:" not in blob  # the taken value is gone
    for secret in (VALUE, API_KEY, TOKEN, token):
        assert secret not in stderr


async def raw_call(proxy: RoutingProxy, **params: Any) -> dict[str, Any]:
    """One 2026-07-28 tools/call as raw JSON-RPC (the SDK client would retry on its own)."""
    message = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "store_credential",
            "arguments": ARGS,
            "_meta": modern_meta({"elicitation": {"url": {}}}),
            **params,
        },
    }
    headers = {
        "authorization": f"Bearer {TOKEN}",
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": "store_credential",
    }
    async with no_reuse_client() as hc:
        response = await hc.post(f"{proxy.url}/mcp", content=json.dumps(message), headers=headers)
    assert response.status_code == 200, response.text
    if response.headers.get("content-type", "").startswith("application/json"):
        answer: dict[str, Any] = response.json()["result"]
        return answer
    for event in response.text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in event.split("\n") if line.startswith("data:"))
        if data.strip() and json.loads(data).get("id") == 7:
            found: dict[str, Any] = json.loads(data)["result"]
            return found
    raise AssertionError("no answer in the SSE body")


@pytest.mark.load
async def wait_for_status(url: str, status: str, timeout: float = 20.0) -> None:
    """Wait (with a deadline) until some entry in Redis has ``status``."""
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(client.hget(k, "st") == status.encode() for k in client.scan_iter("danube-mcp:e:*")):
                return
            await anyio.sleep(0.02)
        raise TimeoutError(f"no entry reached {status!r}")
    finally:
        client.close()


async def test_request_state_completes_on_another_replica_after_the_issuer_is_killed_and_only_once(
    rds: RedisServer, up: FakeUpstream, key_file: Path
) -> None:
    with cluster(3, server_env(up, rds, key_file)) as (replicas, proxy):
        proxy.plan = {"call": [0, 2, 1], "page-post": [1]}
        asked = await raw_call(proxy)  # on 0
        state = asked["requestState"]
        url = json.dumps(asked["inputRequests"]).split('"url": "', 1)[1].split('"', 1)[0]
        retry = {"requestState": state, "inputResponses": {"credential": {"action": "accept"}}}
        posts: list[httpx2.Response] = []

        async def enter() -> None:  # on 1: the page answers once the retry has stored the value
            posts.append(await post_page(url))

        async with anyio.create_task_group() as tg:
            tg.start_soon(enter)
            await wait_for_status(rds.url, "submitted")
            replicas[0].proc.kill()  # kill -9 the process that issued the link and requestState
            replicas[0].proc.wait(10)
            stored = await raw_call(proxy, **retry)  # on 2: takes the value and stores it
        replay = await raw_call(proxy, **retry)  # on 1: the same requestState again
        stderr = all_stderr(replicas)
    assert VALUE not in stderr and API_KEY not in stderr and state not in stderr
    assert posts[0].status_code == 200 and "Stored" in posts[0].text
    assert stored.get("isError") is not True, stored
    assert stored["structuredContent"]["success"] is True
    assert replay["isError"] is True and "already used" in replay["content"][0]["text"]
    assert stored_values(up) == [(VALUE, API_KEY)]
    assert proxy.kinds("call") == [0, 2, 1]


async def test_redis_lost_mid_flight_gives_clean_errors_and_recovers_without_restarts(
    rds: RedisServer, up: FakeUpstream, key_file: Path
) -> None:
    with cluster(2, server_env(up, rds, key_file)) as (replicas, proxy):
        async with sdk_client(proxy) as client:
            first = await client.call_tool("store_credential", ARGS)  # on 0
            assert first.structured_content is not None
            url = first.structured_content["input_url"]
            rds.kill()  # Redis is gone while the link is open

            async with no_reuse_client() as hc:
                page = await hc.get(url)
            assert page.status_code == 503 and "Try again" in page.text
            assert (await post_page(url)).status_code == 503
            for _ in range(2):  # on each replica
                lost = await client.call_tool("store_credential", ARGS)
                assert lost.is_error is True
                text = lost.content[0].text  # type: ignore[union-attr]
                assert "shared state" in text and "retrying is safe" in text
            # A call that needs no shared state still works.
            direct = await client.call_tool("store_credential", {**ARGS, "credential_value": VALUE})
            assert direct.is_error is False and direct.structured_content is not None
            assert direct.structured_content["success"] is True

            rds.start()  # same port, empty (no persistence): the servers reconnect on their own
            again = await client.call_tool("store_credential", ARGS)
            assert again.structured_content is not None, again
            assert again.structured_content["status"] == "awaiting_user_input"
            assert (await post_page(again.structured_content["input_url"])).status_code == 200
            done = await client.call_tool("store_credential", ARGS)
            assert done.is_error is False and done.structured_content is not None
            assert done.structured_content["success"] is True
            old = await post_page(url)  # the link from before the loss is gone with Redis's data
            assert old.status_code == 410
        stderr = all_stderr(replicas)
        for replica in replicas:
            assert replica.proc.poll() is None  # never restarted
    assert stored_values(up) == [(VALUE, API_KEY), (VALUE, API_KEY)]
    assert VALUE not in stderr and TOKEN not in stderr and API_KEY not in stderr


async def test_nothing_readable_ever_reaches_redis_persistence(
    tmp_path: Path, up: FakeUpstream, key_file: Path
) -> None:
    """With the append-only file on, every write Redis ever took is on disk, transient ones
    included (the value between the page POST and the call that takes it): none is readable."""
    folder = tmp_path / "redis-aof"
    folder.mkdir()
    with redis_server(folder, appendonly=True) as aof:
        with cluster(2, server_env(up, aof, key_file)) as (_replicas, proxy):
            async with sdk_client(proxy) as client:
                first = await client.call_tool("store_credential", ARGS)
                assert first.structured_content is not None
                url = first.structured_content["input_url"]
                assert (await post_page(url)).status_code == 200
                done = await client.call_tool("store_credential", ARGS)
                assert done.structured_content is not None and done.structured_content["success"] is True
        saver = redis.Redis.from_url(aof.url)
        saver.save()
        saver.close()
        files = [p for p in folder.rglob("*") if p.is_file() and p.suffix != ".log"]
        written = b"".join(p.read_bytes() for p in files)
    assert any("appendonly" in p.name for p in files) and b"danube-mcp:v:" in written  # the value was there
    assert_absent(written, VALUE, API_KEY, TOKEN, url.rsplit("/", 1)[1])
    assert stored_values(up) == [(VALUE, API_KEY)]


def start_failure(env: dict[str, str], args: tuple[str, ...] = SERVER_ARGS) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "danube_mcp", "--port", "0", *args],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.stdout == ""
    return proc.returncode, proc.stderr


def test_redis_unreachable_at_start_is_one_line_and_exit_2(
    up: FakeUpstream, key_file: Path, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    env = child_env(
        DANUBE_API_KEY=API_KEY,
        DANUBE_API_URL=up.url,
        DANUBE_MCP_STATE_URL=f"redis://:pw-CANARY-0000@127.0.0.1:{port}/0",
        DANUBE_MCP_STATE_KEY_FILE=str(key_file),
    )
    code, err = start_failure(env)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("danube-mcp: cannot reach the shared state store (DANUBE_MCP_STATE_URL)")
    assert f"127.0.0.1:{port}" in err and "pw-CANARY" not in err and SECRET not in err


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ({}, "without a shared key"),
        ({"DANUBE_MCP_STATE_KEY": "short"}, "at least 32 characters"),
        ({"DANUBE_MCP_STATE_KEY_FILE": "{keyfile_public}"}, "open to other users"),
        ({"DANUBE_MCP_STATE_URL": "http://127.0.0.1:6379"}, "must start with redis://"),
    ],
)
def test_redis_without_a_usable_key_refuses_to_start(
    setting: dict[str, str], expected: str, rds: RedisServer, tmp_path: Path
) -> None:
    public = tmp_path / "public.key"
    public.write_text(SECRET)
    public.chmod(0o644)
    extra = {k: v.replace("{keyfile_public}", str(public)) for k, v in setting.items()}
    env = child_env(**{"DANUBE_MCP_STATE_URL": rds.url, **extra})
    code, err = start_failure(env, (*SERVER_ARGS, "--sandbox", "--sandbox-db", str(tmp_path / "s.db")))
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert SECRET not in err


def test_the_flags_work_like_the_variables(tmp_path: Path, key_file: Path, up: FakeUpstream) -> None:
    env = child_env(DANUBE_API_KEY=API_KEY, DANUBE_API_URL=up.url)
    code, err = start_failure(env, (*SERVER_ARGS, "--state-url", "redis://127.0.0.1:1/0"))
    assert code == 2 and err.count("\n") == 1 and "refusing to use --state-url without a shared key" in err
    flags = ("--state-url", f"redis://127.0.0.1:{free_port()}/0", "--state-key-file", str(key_file))
    code, err = start_failure(env, (*SERVER_ARGS, *flags))
    assert code == 2 and err.count("\n") == 1 and "cannot reach the shared state store" in err, err


def test_the_asgi_factory_refuses_an_unreachable_redis_with_one_line(
    up: FakeUpstream, key_file: Path
) -> None:
    env = child_env(
        DANUBE_API_KEY=API_KEY,
        DANUBE_API_URL=up.url,
        DANUBE_MCP_AUTH_TOKEN=TOKEN,
        DANUBE_MCP_TRANSPORT="streamable-http",
        DANUBE_MCP_STATE_URL=f"redis://127.0.0.1:{free_port()}/0",
        DANUBE_MCP_STATE_KEY_FILE=str(key_file),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "uvicorn", "--factory", "danube_mcp.http:create_app", "--port", "0"],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.startswith("danube-mcp: cannot reach the shared state store")
        and proc.stderr.count("\n") == 1
    )


def test_state_settings_are_validated_without_echoing_secrets(tmp_path: Path, key_file: Path) -> None:
    assert resolve_shared_state(env={}) is None  # the embedded default: nothing changes
    with pytest.raises(Exception, match="is set but DANUBE_MCP_STATE_URL"):
        resolve_shared_state(env={"DANUBE_MCP_STATE_KEY": SECRET})
    with pytest.raises(Exception, match="not both"):
        resolve_shared_state(
            env={
                "DANUBE_MCP_STATE_URL": "redis://127.0.0.1:1/0",
                "DANUBE_MCP_STATE_KEY": SECRET,
                "DANUBE_MCP_STATE_KEY_FILE": str(key_file),
            }
        )
    link = tmp_path / "link.key"
    link.symlink_to(key_file)
    with pytest.raises(Exception, match="symbolic link"):
        resolve_shared_state("redis://127.0.0.1:1/0", str(link), env={})
    one = resolve_shared_state("rediss://user:pw-CANARY-1@cache.example:6380/2", str(key_file), env={})
    two = resolve_shared_state(env={"DANUBE_MCP_STATE_URL": "redis://h:1/0", "DANUBE_MCP_STATE_KEY": SECRET})
    assert isinstance(one, SharedState) and isinstance(two, SharedState)
    assert one.where == "cache.example:6380" and "pw-CANARY" not in repr(one) and SECRET not in repr(one)
    # the same secret gives every replica the same keys; each purpose its own key
    assert (one.value_key, one.state_key, one.identity_salt) == (
        two.value_key,
        two.state_key,
        two.identity_salt,
    )
    assert len({one.value_key, one.state_key, one.identity_salt}) == 3


@pytest.mark.load
async def test_uvicorn_factory_with_two_workers_serves_the_2026_flow(
    rds: RedisServer, up: FakeUpstream, key_file: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = server_env(
        up,
        rds,
        key_file,
        DANUBE_MCP_TRANSPORT="streamable-http",
        DANUBE_MCP_SECURE_INPUT="1",
        DANUBE_MCP_PUBLIC_URL=base,
    )
    err = Captured()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "danube_mcp.http:create_app",
            "--workers",
            "2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=err.file,
        env=env,
        cwd=str(REPO),
    )
    try:
        deadline = time.monotonic() + 60
        ready = False
        async with no_reuse_client() as hc:
            while not ready and time.monotonic() < deadline:
                assert proc.poll() is None, err.text()[-2000:]
                with contextlib.suppress(httpx2.TransportError):
                    ready = (await hc.get(f"{base}/healthz")).status_code == 200
                if not ready:
                    await anyio.sleep(0.1)  # polling for the port, with a deadline
        assert ready, err.text()[-2000:]
        with RoutingProxy([("127.0.0.1", port)]) as proxy:  # one backend: uvicorn spreads the workers
            posts: list[httpx2.Response] = []
            for round_ in range(3):
                async with anyio.create_task_group() as tg:

                    async def accept(ctx: ClientRequestContext, params: Any) -> types.ElicitResult:
                        async def later() -> None:
                            posts.append(await post_page(params.url))

                        tg.start_soon(later)
                        return types.ElicitResult(action="accept")

                    async with sdk_client(proxy, accept) as client:
                        result = await client.call_tool("store_credential", ARGS)
                assert result.is_error is False, result
                assert len(posts) == round_ + 1 and posts[-1].status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert stored_values(up) == [(VALUE, API_KEY)] * 3
    assert VALUE not in err.text() and TOKEN not in err.text()
