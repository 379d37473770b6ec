"""Danube's device flow and ``GET /v1/api-keys`` on a real ``danube-sandbox`` process (issue 15, login).

The contract ``danube-mcp login`` and the self-test rely on (full table in docs/readme-drafts/sandbox.md):

    POST /v1/auth/device/code  {"client_name"}
        200 {device_code, user_code, verification_url, expires_in, interval}
    POST /v1/auth/device/token {"device_code"}
        428 authorization_pending, 429 slow_down, 403 access_denied, 410 expired_token,
        410 device_code_used, 400 invalid_grant; 200 {"api_key", "key_id", "name"} exactly once
    POST /v1/_device/approve | /v1/_device/deny  {"user_code"} + danube-api-key
        200 {"approved" | "denied": true, "client_name"}
    GET  /v1/api-keys  danube-api-key
        200 {"api_keys": [{id, name, prefix, created_at, source}]}, 401 for a wrong key
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from danube_mcp.sandbox import DEMO_API_KEY, KEY_ENV_VAR, create_app, open_store
from danube_mcp.sandbox.device import DeviceFlow
from sandbox_proc import start_sandbox

pytestmark = pytest.mark.anyio

OWNER_KEY = "sk-canary-device-owner-4b7e1a9c2d"
STORE_BODY = {
    "service_id": "svc_openai_001",
    "credential_type": "bearer",
    "credential_value": "sk-canary-dv-77aa",
}
FAST = ("--device-poll-interval", "0")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV_VAR, raising=False)


def error_code(response: httpx2.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


async def new_code(c: httpx2.AsyncClient, name: str = "danube-mcp login test") -> dict[str, Any]:
    response = await c.post("/v1/auth/device/code", json={"client_name": name})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def poll(c: httpx2.AsyncClient, device_code: str) -> httpx2.Response:
    return await c.post("/v1/auth/device/token", json={"device_code": device_code})


async def approve(c: httpx2.AsyncClient, user_code: str, key: str = OWNER_KEY) -> httpx2.Response:
    return await c.post("/v1/_device/approve", json={"user_code": user_code}, headers={"danube-api-key": key})


async def test_full_flow_issues_a_working_single_use_key(tmp_path: Path) -> None:
    secrets_seen: list[str] = []
    with start_sandbox(tmp_path, api_keys=(OWNER_KEY,), extra_args=FAST) as sandbox:
        async with httpx2.AsyncClient(base_url=sandbox.url) as c:
            code = await new_code(c)
            assert set(code) >= {"device_code", "user_code", "verification_url", "expires_in", "interval"}
            assert code["verification_url"] == f"{sandbox.url}/device"
            assert code["expires_in"] == 600 and code["interval"] == 0
            assert len(code["user_code"]) == 9 and code["user_code"][4] == "-"
            secrets_seen.append(code["device_code"])

            pending = await poll(c, code["device_code"])
            assert pending.status_code == 428 and error_code(pending) == "authorization_pending"

            # Approval needs a valid key; a person may type the code in lower case without the dash.
            assert (await approve(c, code["user_code"], key="wrong-key")).status_code == 401
            approved = await approve(c, code["user_code"].lower().replace("-", ""))
            assert approved.status_code == 200, approved.text
            assert approved.json() == {"approved": True, "client_name": "danube-mcp login test"}
            assert (await approve(c, code["user_code"])).status_code == 409

            issued = await poll(c, code["device_code"])
            assert issued.status_code == 200, issued.text
            api_key = issued.json()["api_key"]
            secrets_seen.append(api_key)
            assert len(api_key) >= 32 and api_key != OWNER_KEY

            again = await poll(c, code["device_code"])
            assert again.status_code == 410 and error_code(again) == "device_code_used"
            assert api_key not in again.text

            # The new key works for storing, into the approver's account.
            stored = await c.post(
                "/v1/credentials/store", json=STORE_BODY, headers={"danube-api-key": api_key}
            )
            assert stored.status_code == 200, stored.text
            listing = await c.get("/v1/credentials", headers={"danube-api-key": OWNER_KEY})
            assert [entry["service_id"] for entry in listing.json()["credentials"]] == ["svc_openai_001"]

            # Key metadata, read-only: never the key, at most a 4-character prefix.
            keys = await c.get("/v1/api-keys", headers={"danube-api-key": api_key})
            assert keys.status_code == 200
            entries = keys.json()["api_keys"]
            issued_entry = next(entry for entry in entries if entry["id"] == issued.json()["key_id"])
            assert issued_entry["name"] == "danube-mcp login test" and issued_entry["source"] == "device"
            assert issued_entry["prefix"] == api_key[:4] and len(issued_entry["prefix"]) <= 4
            assert set(issued_entry) == {"id", "name", "prefix", "created_at", "source"}
            assert api_key not in keys.text and OWNER_KEY not in keys.text
            assert api_key[4:12] not in keys.text
            for bad in ("wrong-key", ""):
                refused = await c.get("/v1/api-keys", headers={"danube-api-key": bad})
                assert refused.status_code == 401 and error_code(refused) == "unauthorized"
        assert sandbox.stop() == 0
    stderr = sandbox.stderr_text()
    assert "device code approved" in stderr and "issued key" in stderr
    for secret in (*secrets_seen, OWNER_KEY, STORE_BODY["credential_value"]):
        assert secret not in stderr
    assert sandbox.stdout_bytes() == b""

    # Issued keys survive a restart (kept as HMACs in the database, never as keys).
    with start_sandbox(tmp_path, api_keys=(OWNER_KEY,)) as restarted:
        async with httpx2.AsyncClient(base_url=restarted.url, headers={"danube-api-key": api_key}) as c:
            assert (await c.get("/v1/api-keys")).status_code == 200
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("sb.db*") if p.is_file())
    assert api_key.encode() not in raw and OWNER_KEY.encode() not in raw


async def test_polling_faster_than_interval_gets_slow_down(tmp_path: Path) -> None:
    with start_sandbox(tmp_path, api_keys=(OWNER_KEY,)) as sandbox:  # default interval: 5 s
        async with httpx2.AsyncClient(base_url=sandbox.url) as c:
            code = await new_code(c)
            assert code["interval"] == 5
            assert (await poll(c, code["device_code"])).status_code == 428
            fast = await poll(c, code["device_code"])
            assert fast.status_code == 429 and error_code(fast) == "slow_down"
            assert fast.headers["retry-after"] == "10"  # RFC 8628: +5 s per slow_down
            # An approved code is handed over at once, however fast the poll.
            assert (await approve(c, code["user_code"])).status_code == 200
            assert (await poll(c, code["device_code"])).status_code == 200


async def test_expired_code_gets_410(tmp_path: Path) -> None:
    with start_sandbox(
        tmp_path, api_keys=(OWNER_KEY,), extra_args=(*FAST, "--device-code-ttl", "1")
    ) as sandbox:
        async with httpx2.AsyncClient(base_url=sandbox.url) as c:
            code = await new_code(c)
            assert code["expires_in"] == 1
            deadline = time.monotonic() + 10
            while (response := await poll(c, code["device_code"])).status_code == 428:
                assert time.monotonic() < deadline, "the code never expired"
                await anyio.sleep(0.05)
            assert response.status_code == 410 and error_code(response) == "expired_token"
            late = await approve(c, code["user_code"])
            assert late.status_code in (404, 410)


async def test_denied_unknown_and_malformed(tmp_path: Path) -> None:
    with start_sandbox(tmp_path, api_keys=(OWNER_KEY,), extra_args=FAST) as sandbox:
        async with httpx2.AsyncClient(base_url=sandbox.url) as c:
            code = await new_code(c)
            denied = await c.post(
                "/v1/_device/deny",
                json={"user_code": code["user_code"]},
                headers={"danube-api-key": OWNER_KEY},
            )
            assert denied.status_code == 200 and denied.json()["denied"] is True
            refused = await poll(c, code["device_code"])
            assert refused.status_code == 403 and error_code(refused) == "access_denied"

            unknown = await poll(c, "no-such-device-code")
            assert unknown.status_code == 400 and error_code(unknown) == "invalid_grant"
            assert (await approve(c, "BCDF-GHJK")).status_code == 404
            assert (await c.post("/v1/auth/device/token", json={})).status_code == 422
            assert (await c.post("/v1/auth/device/code", json={"client_name": 7})).status_code == 422
            assert (await c.post("/v1/auth/device/code", json={"client_name": "a\nb"})).status_code == 422
            default_name = await c.post("/v1/auth/device/code", json={})
            assert default_name.status_code == 200
            page = await c.get("/device", params={"user_code": code["user_code"]})
            assert page.status_code == 200 and code["user_code"] in page.text
            assert "script-src 'sha256-" in page.headers["content-security-policy"]
            hostile = await c.get("/device", params={"user_code": "<script>x</script>"})
            assert "<script>x" not in hostile.text


async def test_configured_key_metadata_and_short_keys_get_no_prefix(tmp_path: Path) -> None:
    async with open_store(tmp_path / "sb.db") as store:
        app = create_app(store, api_keys=[DEMO_API_KEY, OWNER_KEY], device_flow=DeviceFlow(interval=0))
        transport = httpx2.ASGITransport(app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://sandbox") as c:
            demo = (await c.get("/v1/api-keys", headers={"danube-api-key": DEMO_API_KEY})).json()["api_keys"]
            owner = (await c.get("/v1/api-keys", headers={"danube-api-key": OWNER_KEY})).json()["api_keys"]
    assert [entry["name"] for entry in demo] == ["demo key"] and demo[0][
        "prefix"
    ] == ""  # 16 chars: too short
    assert owner[0]["prefix"] == OWNER_KEY[:4] and owner[0]["source"] == "configured"
    assert demo[0]["id"] != owner[0]["id"]


async def test_pending_codes_are_capped(tmp_path: Path) -> None:
    async with open_store(":memory:") as store:
        app = create_app(store, api_keys=[DEMO_API_KEY], device_flow=DeviceFlow(max_pending=3))
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://sandbox") as c:
            statuses = [(await c.post("/v1/auth/device/code", json={})).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
