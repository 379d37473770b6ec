"""The sandbox's contract: the Danube store endpoint, its errors, and the encrypted store behind it."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from danube_mcp.sandbox import (
    DEMO_API_KEY,
    KEY_ENV_VAR,
    OAUTH_ONLY_SERVICE_ID,
    CredentialStore,
    SandboxIntegrityError,
    SandboxKeyError,
    create_app,
    open_store,
)
from danube_mcp.sandbox.constants import MAX_BODY_BYTES, MAX_CREDENTIAL_VALUE_CHARS, MAX_SERVICE_ID_CHARS
from sandbox_proc import sandbox_stats, start_sandbox

pytestmark = pytest.mark.anyio

OTHER_KEY = "other-tenant-key-7f3a"
OPENAI = "svc_openai_001"
LINEAR = "3f0c1a52-8d4e-4b8e-9a4c-2d5b7e1f6a90"
CANARY = "sk-canary-3b9f0e7d1c5a4f2e8d6b-do-not-leak"
STORE = "/v1/credentials/store"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV_VAR, raising=False)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "sb.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[CredentialStore]:
    with open_store(db_path) as opened:
        yield opened


@pytest.fixture
async def client(store: CredentialStore) -> AsyncIterator[httpx2.AsyncClient]:
    app = create_app(store, api_keys=[DEMO_API_KEY, OTHER_KEY])
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://sandbox") as c:
        yield c


def body(service_id: str = OPENAI, credential_type: str = "bearer", value: str = CANARY) -> dict[str, Any]:
    return {"service_id": service_id, "credential_type": credential_type, "credential_value": value}


async def post_store(
    client: httpx2.AsyncClient, payload: Any, *, key: str | None = DEMO_API_KEY, **kwargs: Any
) -> httpx2.Response:
    headers = kwargs.pop("headers", {})
    if key is not None:
        headers["danube-api-key"] = key
    if "content" in kwargs:
        return await client.post(STORE, headers=headers, **kwargs)
    return await client.post(STORE, json=payload, headers=headers, **kwargs)


def assert_error(response: httpx2.Response, status: int, code: str) -> dict[str, Any]:
    """Danube's envelope, with nothing secret in it."""
    assert response.status_code == status, response.text
    data = response.json()
    assert set(data) == {"error"}
    error = data["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)
    assert CANARY not in response.text
    assert DEMO_API_KEY not in response.text and OTHER_KEY not in response.text
    return dict(error)


# -- the happy path and the catalog --------------------------------------------------------------


async def test_health(client: httpx2.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_services_catalog(client: httpx2.AsyncClient) -> None:
    response = await client.get("/v1/services")
    assert response.status_code == 200
    services = {entry["id"]: entry for entry in response.json()["services"]}
    assert services[OPENAI] == {"id": OPENAI, "name": "OpenAI", "requires_credentials": True}
    assert services["svc_github_001"]["name"] == "GitHub"
    assert services["svc_anthropic_001"]["name"] == "Anthropic"
    assert services[LINEAR]["name"] == "Linear"
    assert services[OAUTH_ONLY_SERVICE_ID]["requires_credentials"] is False
    assert all(set(entry) == {"id", "name", "requires_credentials"} for entry in services.values())


async def test_store_returns_danube_response_and_encrypts(
    client: httpx2.AsyncClient, store: CredentialStore
) -> None:
    response = await post_store(client, body())
    assert response.status_code == 200
    assert response.json() == {
        "success": True,
        "service_id": OPENAI,
        "service_name": "OpenAI",
        "credential_type": "bearer",
        "stored_as": "value",
    }
    assert store.reveal_for_tests(DEMO_API_KEY, OPENAI) == CANARY
    assert store.reveal_for_tests(OTHER_KEY, OPENAI) is None


async def test_store_trims_service_id_and_accepts_uuid_and_charset(client: httpx2.AsyncClient) -> None:
    response = await post_store(
        client,
        None,
        content=json.dumps(body(f"  {LINEAR.upper()} ", "api_key")).encode(),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["service_id"] == LINEAR
    assert response.json()["service_name"] == "Linear"


# -- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "", "   "])
async def test_missing_api_key_is_401(
    client: httpx2.AsyncClient, store: CredentialStore, key: str | None
) -> None:
    assert_error(await post_store(client, body(), key=key), 401, "unauthorized")
    assert store.list_credentials_sync(DEMO_API_KEY) == []


@pytest.mark.parametrize("key", ["not-a-key", "${DANUBE_API_KEY}", DEMO_API_KEY + "x"])
async def test_unknown_api_key_is_401(client: httpx2.AsyncClient, store: CredentialStore, key: str) -> None:
    error = assert_error(await post_store(client, body(), key=key), 401, "unauthorized")
    assert key not in json.dumps(error)
    assert store.list_credentials_sync(key) == []


async def test_listing_requires_a_key(client: httpx2.AsyncClient) -> None:
    assert_error(await client.get("/v1/credentials"), 401, "unauthorized")
    assert_error(await client.get("/v1/credentials", headers={"danube-api-key": "nope"}), 401, "unauthorized")


# -- refused bodies ------------------------------------------------------------------------------


async def test_unknown_service_is_404(client: httpx2.AsyncClient) -> None:
    error = assert_error(await post_store(client, body("svc_nope_404")), 404, "service_not_found")
    assert error["details"] == {"service_id": "svc_nope_404"}


async def test_oauth_only_service_points_to_dashboard(
    client: httpx2.AsyncClient, store: CredentialStore
) -> None:
    error = assert_error(await post_store(client, body(OAUTH_ONLY_SERVICE_ID)), 400, "oauth_only_service")
    assert f"/dashboard/tools/{OAUTH_ONLY_SERVICE_ID}" in error["message"]
    assert store.list_credentials_sync(DEMO_API_KEY) == []


@pytest.mark.parametrize("credential_type", ["oauth", "oauth2", "OAuth"])
async def test_oauth_credential_type_points_to_dashboard(
    client: httpx2.AsyncClient, credential_type: str
) -> None:
    error = assert_error(
        await post_store(client, body(credential_type=credential_type)), 422, "unsupported_credential_type"
    )
    assert f"/dashboard/tools/{OPENAI}" in error["message"]
    assert error["details"]["allowed"] == ["api_key", "bearer"]


BAD_BODIES: list[tuple[str, Any, int, str]] = [
    ("json array", [CANARY], 400, "invalid_body"),
    ("json string", CANARY, 400, "invalid_body"),
    ("missing service_id", {k: v for k, v in body().items() if k != "service_id"}, 422, "missing_field"),
    ("missing type", {k: v for k, v in body().items() if k != "credential_type"}, 422, "missing_field"),
    ("missing value", {k: v for k, v in body().items() if k != "credential_value"}, 422, "missing_field"),
    ("service_id number", {**body(), "service_id": 1}, 422, "invalid_field"),
    ("service_id blank", {**body(), "service_id": "  \t "}, 422, "invalid_field"),
    ("service_id too long", {**body(), "service_id": "s" * (MAX_SERVICE_ID_CHARS + 1)}, 422, "invalid_field"),
    ("type null", {**body(), "credential_type": None}, 422, "invalid_field"),
    ("type unknown", {**body(), "credential_type": "password"}, 422, "unsupported_credential_type"),
    ("type wrong case", {**body(), "credential_type": "Bearer"}, 422, "unsupported_credential_type"),
    ("value number", {**body(), "credential_value": 12345}, 422, "invalid_field"),
    ("value object", {**body(), "credential_value": {"secret": CANARY}}, 422, "invalid_field"),
    ("value list", {**body(), "credential_value": [CANARY]}, 422, "invalid_field"),
    ("value empty", {**body(), "credential_value": ""}, 422, "invalid_field"),
    ("value blank", {**body(), "credential_value": "   "}, 422, "invalid_field"),
    ("value too long", {**body(), "credential_value": CANARY * 500}, 422, "invalid_field"),
]


@pytest.mark.parametrize(
    ("payload", "status", "code"), [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES]
)
async def test_refused_bodies(
    client: httpx2.AsyncClient, store: CredentialStore, payload: Any, status: int, code: str
) -> None:
    assert len(CANARY * 500) > MAX_CREDENTIAL_VALUE_CHARS
    assert_error(await post_store(client, payload), status, code)
    assert store.list_credentials_sync(DEMO_API_KEY) == []


@pytest.mark.parametrize(
    "raw",
    [b"{not json " + CANARY.encode(), b"", b'{"credential_value": "' + CANARY.encode() + b'"', b"\xff\xfe{"],
)
async def test_invalid_json_is_400(client: httpx2.AsyncClient, raw: bytes) -> None:
    response = await post_store(client, None, content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400, "invalid_json")


async def test_lone_surrogate_value_is_refused(client: httpx2.AsyncClient) -> None:
    raw = json.dumps(body(value="abc\ud800def")).encode()  # json.dumps escapes it as \\ud800
    response = await post_store(client, None, content=raw, headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_field")


async def test_length_boundaries(client: httpx2.AsyncClient, store: CredentialStore) -> None:
    longest = "v" * MAX_CREDENTIAL_VALUE_CHARS
    assert (await post_store(client, body(value=longest))).status_code == 200
    assert store.reveal_for_tests(DEMO_API_KEY, OPENAI) == longest
    # A 256-character service id passes validation (and is then merely unknown).
    assert_error(await post_store(client, body("s" * MAX_SERVICE_ID_CHARS)), 404, "service_not_found")


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "jsonx"])
async def test_non_json_content_type_is_415(client: httpx2.AsyncClient, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = await post_store(client, None, content=json.dumps(body()).encode(), headers=headers)
    assert_error(response, 415, "unsupported_media_type")


async def test_oversized_body_is_413(client: httpx2.AsyncClient, store: CredentialStore) -> None:
    payload = {**body(), "padding": "x" * MAX_BODY_BYTES}
    error = assert_error(await post_store(client, payload), 413, "payload_too_large")
    assert error["details"] == {"max_bytes": MAX_BODY_BYTES}

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is enforced while reading
        yield json.dumps(body())[:-1].encode() + b', "padding": "'
        for _ in range(MAX_BODY_BYTES // 1024 + 1):
            yield b"x" * 1024
        yield b'"}'

    response = await post_store(client, None, content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "payload_too_large")
    assert store.list_credentials_sync(DEMO_API_KEY) == []


async def test_unknown_route_and_method_use_the_envelope(client: httpx2.AsyncClient) -> None:
    assert_error(await client.get("/v1/nope"), 404, "not_found")
    assert_error(await client.get(STORE, headers={"danube-api-key": DEMO_API_KEY}), 405, "method_not_allowed")


# -- what gets stored ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stored_as"),
    [
        ("vault://secret/openai/prod#api_key", "reference"),
        ("vault://kv/team/a/b/c#token", "reference"),
        ("env://OPENAI_API_KEY", "reference"),
        ("env://_X1", "reference"),
        ("sk-proj-abc123", "value"),
        ("vault://secret/openai", "value"),  # no #field
        ("vault://secret#field", "value"),  # no path
        ("env://", "value"),
        ("env://1BAD", "value"),
        ("env://A B", "value"),
        (" env://OPENAI_API_KEY", "value"),
        ("https://vault.example/secret#x", "value"),
    ],
)
async def test_reference_detection(
    client: httpx2.AsyncClient, store: CredentialStore, value: str, stored_as: str
) -> None:
    response = await post_store(client, body(value=value))
    assert response.status_code == 200, response.text
    assert response.json()["stored_as"] == stored_as
    [row] = store.list_credentials_sync(DEMO_API_KEY)
    assert row.stored_as == stored_as
    assert store.reveal_for_tests(DEMO_API_KEY, OPENAI) == value


async def test_storing_again_replaces(client: httpx2.AsyncClient, store: CredentialStore) -> None:
    assert (await post_store(client, body(value="first-value"))).status_code == 200
    assert (
        await post_store(client, body(credential_type="api_key", value="env://NEW_KEY"))
    ).status_code == 200
    listing = (await client.get("/v1/credentials", headers={"danube-api-key": DEMO_API_KEY})).json()
    [entry] = listing["credentials"]
    assert (entry["service_id"], entry["credential_type"], entry["stored_as"]) == (
        OPENAI,
        "api_key",
        "reference",
    )
    assert entry["version"] == 2
    assert store.reveal_for_tests(DEMO_API_KEY, OPENAI) == "env://NEW_KEY"


async def test_owners_are_isolated(client: httpx2.AsyncClient, store: CredentialStore) -> None:
    assert (await post_store(client, body(value="mine"))).status_code == 200
    assert (await post_store(client, body(value="theirs"), key=OTHER_KEY)).status_code == 200
    assert store.reveal_for_tests(DEMO_API_KEY, OPENAI) == "mine"
    assert store.reveal_for_tests(OTHER_KEY, OPENAI) == "theirs"
    mine = (await client.get("/v1/credentials", headers={"danube-api-key": DEMO_API_KEY})).json()
    assert [entry["version"] for entry in mine["credentials"]] == [1]


async def test_listing_shows_metadata_never_the_value(
    client: httpx2.AsyncClient, store: CredentialStore
) -> None:
    assert (await post_store(client, body(value=CANARY))).status_code == 200
    assert (await post_store(client, body("svc_github_001", "api_key", "ghp_other_value"))).status_code == 200
    response = await client.get("/v1/credentials", headers={"danube-api-key": DEMO_API_KEY})
    assert response.status_code == 200
    assert CANARY not in response.text and "ghp_other_value" not in response.text
    entries = {entry["service_id"]: entry for entry in response.json()["credentials"]}
    assert set(entries) == {OPENAI, "svc_github_001"}
    entry = entries[OPENAI]
    assert set(entry) >= {"service_id", "credential_type", "stored_as", "updated_at", "fingerprint"}
    assert (entry["credential_type"], entry["stored_as"]) == ("bearer", "value")
    updated = datetime.fromisoformat(entry["updated_at"])
    assert updated.utcoffset() is not None and updated.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - updated).total_seconds()) < 300

    fingerprint = entry["fingerprint"]
    assert len(fingerprint) == 8 and int(fingerprint, 16) >= 0
    assert fingerprint not in CANARY
    for algorithm in ("sha256", "sha1", "md5", "sha512", "blake2b"):
        assert fingerprint not in hashlib.new(algorithm, CANARY.encode()).hexdigest()
    assert entries["svc_github_001"]["fingerprint"] != fingerprint
    # Keyed: the same value under another database key has another fingerprint.
    with open_store(":memory:") as other:
        assert other.fingerprint(CANARY) != fingerprint
    assert store.fingerprint(CANARY) == fingerprint


async def test_stats_count_every_store_request(client: httpx2.AsyncClient) -> None:
    assert (await client.get("/v1/_stats")).json() == {"store_requests": 0, "stored": 0}
    await post_store(client, body())
    await post_store(client, body(), key="wrong")
    await post_store(client, body("svc_unknown"))
    await post_store(client, body(value="second"))
    assert (await client.get("/v1/_stats")).json() == {"store_requests": 4, "stored": 2}


# -- concurrency ---------------------------------------------------------------------------------


async def test_concurrent_stores_over_http(client: httpx2.AsyncClient, store: CredentialStore) -> None:
    values = [f"concurrent-value-{i:02d}" for i in range(32)]
    statuses: list[int] = []

    async def one(value: str) -> None:
        statuses.append((await post_store(client, body(value=value))).status_code)

    async with anyio.create_task_group() as tg:
        for value in values:
            tg.start_soon(one, value)
    assert statuses == [200] * 32
    final = store.reveal_for_tests(DEMO_API_KEY, OPENAI)
    assert final in values
    [row] = store.list_credentials_sync(DEMO_API_KEY)
    assert row.version == 32
    assert row.fingerprint == store.fingerprint(final)
    assert (await client.get("/v1/_stats")).json() == {"store_requests": 32, "stored": 32}


async def test_concurrent_puts_last_acknowledged_write_wins(store: CredentialStore) -> None:
    acknowledged: dict[int, str] = {}

    async def one(value: str, service_id: str) -> None:
        result = await store.put(DEMO_API_KEY, service_id, "bearer", value)
        if service_id == OPENAI:
            acknowledged[result.version] = value

    async with anyio.create_task_group() as tg:
        for i in range(32):
            tg.start_soon(one, f"race-{i}", OPENAI)
            tg.start_soon(one, f"github-{i}", "svc_github_001")
    assert sorted(acknowledged) == list(range(1, 33))  # every write committed exactly once, in some order
    assert store.reveal_for_tests(DEMO_API_KEY, OPENAI) == acknowledged[32]
    assert (store.reveal_for_tests(DEMO_API_KEY, "svc_github_001") or "").startswith("github-")


# -- encryption at rest, keys, persistence -------------------------------------------------------


def _raw_rows(db_path: Path) -> list[tuple[str, str, bytes, bytes]]:
    with closing(sqlite3.connect(db_path)) as raw:
        rows = raw.execute("SELECT owner, service_id, nonce, ciphertext FROM credentials ORDER BY service_id")
        return [(str(a), str(b), bytes(c), bytes(d)) for a, b, c, d in rows]


def _file_bytes(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


async def test_plaintext_never_reaches_the_database_files(
    client: httpx2.AsyncClient, store: CredentialStore, db_path: Path
) -> None:
    assert (await post_store(client, body(value=CANARY))).status_code == 200
    wal = Path(f"{db_path}-wal")
    [(owner, _, nonce, ciphertext)] = _raw_rows(db_path)
    before = _file_bytes(db_path) + _file_bytes(wal) + _file_bytes(Path(f"{db_path}-shm"))
    assert wal.stat().st_size > 0
    assert nonce in before and ciphertext in before  # we are looking at the bytes that hold the row
    for needle in (CANARY.encode(), CANARY.encode("utf-16-le"), base64.b64encode(CANARY.encode())):
        assert needle not in before
    assert DEMO_API_KEY.encode() not in before
    assert owner == store.owner_id(DEMO_API_KEY) != hashlib.sha256(DEMO_API_KEY.encode()).hexdigest()

    store.close()
    after = _file_bytes(db_path) + _file_bytes(wal)
    assert ciphertext in after
    assert CANARY.encode() not in after and DEMO_API_KEY.encode() not in after


async def test_same_value_encrypts_differently_each_write(store: CredentialStore, db_path: Path) -> None:
    await store.put(DEMO_API_KEY, OPENAI, "bearer", CANARY)
    [(_, _, nonce1, ct1)] = _raw_rows(db_path)
    await store.put(DEMO_API_KEY, OPENAI, "bearer", CANARY)
    [(_, _, nonce2, ct2)] = _raw_rows(db_path)
    assert len(nonce1) == len(nonce2) == 12
    assert nonce1 != nonce2 and ct1 != ct2
    assert store.reveal_for_tests(DEMO_API_KEY, OPENAI) == CANARY


async def test_rows_cannot_be_swapped(store: CredentialStore, db_path: Path) -> None:
    await store.put(DEMO_API_KEY, OPENAI, "bearer", "value-for-openai")
    await store.put(DEMO_API_KEY, "svc_github_001", "bearer", "value-for-github")
    store.close()
    with closing(sqlite3.connect(db_path)) as raw, raw:
        raw.execute(
            "UPDATE credentials SET (nonce, ciphertext) = (SELECT nonce, ciphertext FROM credentials"
            " WHERE service_id = 'svc_github_001') WHERE service_id = ?",
            (OPENAI,),
        )
    with open_store(db_path) as reopened:
        assert reopened.reveal_for_tests(DEMO_API_KEY, "svc_github_001") == "value-for-github"
        assert reopened.integrity_failures == 1
        with pytest.raises(SandboxIntegrityError):
            reopened.reveal_for_tests(DEMO_API_KEY, OPENAI)


def test_key_file_created_0600_and_reused(db_path: Path) -> None:
    with open_store(db_path) as first:
        first.put_sync(DEMO_API_KEY, OPENAI, "bearer", CANARY)
    key_file = Path(f"{db_path}.key")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_file.read_text())) == 32
    with open_store(db_path) as second:
        assert second.reveal_for_tests(DEMO_API_KEY, OPENAI) == CANARY
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_persistence_with_env_key(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV_VAR, base64.b64encode(os.urandom(32)).decode())
    with open_store(db_path) as first:
        first.put_sync(DEMO_API_KEY, OPENAI, "api_key", "env://OPENAI_API_KEY")
    assert not Path(f"{db_path}.key").exists()
    with open_store(db_path) as second:
        assert second.reveal_for_tests(DEMO_API_KEY, OPENAI) == "env://OPENAI_API_KEY"
        [row] = second.list_credentials_sync(DEMO_API_KEY)
        assert (row.credential_type, row.stored_as) == ("api_key", "reference")


def test_wrong_env_key_is_refused(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV_VAR, base64.b64encode(b"a" * 32).decode())
    with open_store(db_path) as first:
        first.put_sync(DEMO_API_KEY, OPENAI, "bearer", CANARY)
    wrong = base64.b64encode(b"b" * 32).decode()
    monkeypatch.setenv(KEY_ENV_VAR, wrong)
    with pytest.raises(SandboxKeyError, match="not the key") as excinfo:
        open_store(db_path)
    assert wrong not in str(excinfo.value)


def test_wrong_or_missing_key_file_is_refused(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_store(db_path) as first:
        first.put_sync(DEMO_API_KEY, OPENAI, "bearer", CANARY)
    key_file = Path(f"{db_path}.key")
    original = key_file.read_text()
    key_file.write_text(base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(SandboxKeyError, match="not the key"):
        open_store(db_path)
    key_file.unlink()
    with pytest.raises(SandboxKeyError, match="missing"):
        open_store(db_path)
    assert not key_file.exists()  # a missing key file is not silently replaced by a new key
    # The env key takes precedence over the key file, and is checked just the same.
    key_file.write_text(original)
    key_file.chmod(0o600)
    monkeypatch.setenv(KEY_ENV_VAR, base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(SandboxKeyError, match=KEY_ENV_VAR):
        open_store(db_path)
    monkeypatch.delenv(KEY_ENV_VAR)
    with open_store(db_path) as restored:
        assert restored.reveal_for_tests(DEMO_API_KEY, OPENAI) == CANARY


@pytest.mark.parametrize(
    "bad",
    ["", "not base64 at all!", base64.b64encode(b"short").decode(), base64.b64encode(b"x" * 33).decode()],
)
def test_malformed_env_key_is_refused(db_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv(KEY_ENV_VAR, bad)
    with pytest.raises(SandboxKeyError, match=KEY_ENV_VAR) as excinfo:
        open_store(db_path)
    if bad:
        assert bad not in str(excinfo.value)


def test_explicit_key_must_be_32_bytes(db_path: Path) -> None:
    with pytest.raises(SandboxKeyError):
        open_store(db_path, key=b"k" * 16)


async def test_memory_store_works_without_a_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with open_store(":memory:") as memory:
        app = create_app(memory, api_keys=[DEMO_API_KEY])
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://sandbox") as c:
            assert (await post_store(c, body())).status_code == 200
        assert memory.reveal_for_tests(DEMO_API_KEY, OPENAI) == CANARY
    assert list(tmp_path.iterdir()) == []


async def test_closed_store_refuses_work(store: CredentialStore) -> None:
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await store.put(DEMO_API_KEY, OPENAI, "bearer", CANARY)


async def test_nothing_secret_is_logged(client: httpx2.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert (await post_store(client, body(value=CANARY))).status_code == 200
    await post_store(client, body(value=CANARY), key="wrong-key-value")
    await post_store(client, {**body(), "credential_type": "nope"})
    assert any("svc_openai_001" in record.getMessage() for record in caplog.records)
    assert CANARY not in caplog.text
    assert DEMO_API_KEY not in caplog.text and "wrong-key-value" not in caplog.text


def test_create_app_needs_api_keys(store: CredentialStore) -> None:
    with pytest.raises(ValueError, match="api_keys"):
        create_app(store, api_keys=[])
    with pytest.raises(ValueError, match="api_keys"):
        create_app(store, api_keys=[DEMO_API_KEY, ""])


# -- the real process ----------------------------------------------------------------------------


async def test_subprocess_serves_concurrently_and_persists(tmp_path: Path) -> None:
    key = "proc-test-key-9d2c"
    values = [f"proc-value-{i:02d}" for i in range(32)]
    with start_sandbox(tmp_path, api_keys=(key,), extra_args=("--log-level", "debug")) as sandbox:
        async with httpx2.AsyncClient(base_url=sandbox.url, headers={"danube-api-key": key}, timeout=30) as c:
            assert (await c.get("/health")).json() == {"status": "ok"}
            responses = await _gather_posts(c, [body(value=value) for value in values])
            assert [r.status_code for r in responses] == [200] * 32
            assert all(r.json()["success"] is True for r in responses)
            assert_error(
                await c.post(STORE, json=body(), headers={"danube-api-key": DEMO_API_KEY}),
                401,
                "unauthorized",
            )
        assert await sandbox_stats(sandbox.url) == {"store_requests": 33, "stored": 32}
        assert sandbox.stop() == 0
    stderr = sandbox.stderr_text()
    assert sandbox.stdout_bytes() == b""
    assert [line for line in stderr.splitlines() if "listening on" in line] == [
        f"danube-sandbox: listening on {sandbox.url}"
    ]
    assert key not in stderr and not any(value in stderr for value in values)

    with start_sandbox(tmp_path, api_keys=(key,)) as restarted:
        async with httpx2.AsyncClient(base_url=restarted.url, headers={"danube-api-key": key}) as c:
            [entry] = (await c.get("/v1/credentials")).json()["credentials"]
        assert entry["service_id"] == OPENAI and entry["version"] == 32
    with open_store(sandbox.db_path) as reopened:
        final = reopened.reveal_for_tests(key, OPENAI)
        assert final in values
        assert reopened.fingerprint(final or "") == entry["fingerprint"]


async def _gather_posts(c: httpx2.AsyncClient, payloads: list[dict[str, Any]]) -> list[httpx2.Response]:
    responses: list[httpx2.Response | None] = [None] * len(payloads)

    async def one(index: int) -> None:
        responses[index] = await c.post(STORE, json=payloads[index])

    async with anyio.create_task_group() as tg:
        for index in range(len(payloads)):
            tg.start_soon(one, index)
    return [r for r in responses if r is not None]
