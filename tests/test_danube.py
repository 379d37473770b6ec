"""Unit tests for the Danube REST client (``danube_mcp.danube.client``), through ``httpx2.MockTransport``.

The client's ``_sleep`` is replaced with a recorder (no real waiting) and ``_random`` with a fixed
value, so retry delays are exact. Only the call-budget tests use real time, against the budget.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import anyio
import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from danube_mcp import __version__
from danube_mcp.danube.client import (
    BACKOFF_CAP,
    MAX_RESPONSE_BYTES,
    RETRY_AFTER_CAP,
    AuthenticationFailed,
    ConfirmationRequired,
    ConnectionFailed,
    DanubeClient,
    DanubeError,
    MalformedResponse,
    MissingApiKey,
    NotFound,
    PaymentRequired,
    PermissionDenied,
    RateLimited,
    ServerError,
    StoreRefused,
    UpstreamTimeout,
    ValidationFailed,
)
from danube_mcp.danube.redact import MAX_MESSAGE_CHARS, REDACTED, scrub
from danube_mcp.tool.schema import StoreRequest, StoreResult

BASE = "https://danube.test"
KEY = "sk-CANARY-KEY-7f3a9c2e41b8d6057a1c3e9f"  # 40 characters
OTHER_KEY = "sk-CANARY-OVERRIDE-5d1e8b7c9a2f40316e7b"
VALUE = 'sk-CANARY-VAL-"quoted"-ñandú-€-0123456789'  # quotes and non-ASCII
REQ = StoreRequest(service_id="svc_openai_001", credential_type="bearer", credential_value=VALUE)

OK_BODY: dict[str, Any] = {
    "success": True,
    "service_id": "svc_openai_001",
    "service_name": "OpenAI",
    "credential_type": "bearer",
}

MAX_EXC_CHARS = 600
HTML_TAG = re.compile(r"<\s*/?\s*(?:!doctype|html|head|body|title|h\d|center|hr|p|div)\b", re.IGNORECASE)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --------------------------------------------------------------------------------------------
# Harness

Step = Callable[[httpx2.Request], httpx2.Response | Awaitable[httpx2.Response]]


def reply(
    status: int = 200,
    body: Any = None,
    *,
    content: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    extensions: dict[str, Any] | None = None,
) -> Step:
    """A step answering with a fresh response each time: JSON ``body``, or raw ``content``."""

    def step(request: httpx2.Request) -> httpx2.Response:
        if content is not None:
            return httpx2.Response(status, content=content, headers=headers, extensions=extensions)
        if body is not None:
            return httpx2.Response(status, json=body, headers=headers, extensions=extensions)
        return httpx2.Response(status, headers=headers, extensions=extensions)

    return step


def fail(exc_type: type[httpx2.RequestError], message: str = "boom") -> Step:
    def step(request: httpx2.Request) -> httpx2.Response:
        raise exc_type(message, request=request)

    return step


def ok(**extra: Any) -> Step:
    return reply(200, {**OK_BODY, **extra})


@dataclass
class Harness:
    client: DanubeClient
    requests: list[httpx2.Request] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)


def make_harness(*script: Step, api_key: str | None = KEY, base_url: str = BASE, **kw: Any) -> Harness:
    """A client whose transport plays ``script`` in order, repeating the last step."""
    assert script
    requests: list[httpx2.Request] = []

    async def handler(request: httpx2.Request) -> httpx2.Response:
        requests.append(request)
        result = script[min(len(requests), len(script)) - 1](request)
        if isinstance(result, httpx2.Response):
            return result
        return await result

    client = DanubeClient(base_url=base_url, api_key=api_key, transport=httpx2.MockTransport(handler), **kw)
    h = Harness(client=client, requests=requests)

    async def fake_sleep(delay: float) -> None:
        h.sleeps.append(delay)

    client._sleep = fake_sleep
    client._random = lambda: 0.5
    return h


@asynccontextmanager
async def harness(*script: Step, **kw: Any) -> AsyncIterator[Harness]:
    h = make_harness(*script, **kw)
    async with h.client:
        yield h


async def store_ok(
    *script: Step, request: StoreRequest = REQ, call_key: str | None = None, **kw: Any
) -> tuple[StoreResult, Harness]:
    async with harness(*script, **kw) as h:
        result = await h.client.store_credential(request, api_key=call_key)
    return result, h


async def store_err(
    *script: Step,
    expected: type[DanubeError] = DanubeError,
    request: StoreRequest = REQ,
    call_key: str | None = None,
    **kw: Any,
) -> tuple[DanubeError, Harness]:
    async with harness(*script, **kw) as h:
        with pytest.raises(expected) as info:
            await h.client.store_credential(request, api_key=call_key)
    return info.value, h


def assert_tidy(exc: DanubeError, status: int | None = None) -> None:
    """One bounded line for the model, naming the HTTP status when there was one."""
    text = str(exc)
    assert text
    assert "\n" not in text and "\r" not in text
    assert len(text) <= MAX_EXC_CHARS
    assert not HTML_TAG.search(text)
    if status is not None:
        assert f"HTTP {status}" in text
        assert exc.status == status
    if exc.upstream_message is not None:
        assert len(exc.upstream_message) <= MAX_MESSAGE_CHARS
        assert "\n" not in exc.upstream_message


def secret_forms(secret: str) -> list[str]:
    return [
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        secret[:20],
    ]


def assert_no_secrets(*texts: str | None, secrets: tuple[str, ...] = (KEY, VALUE)) -> None:
    for text in texts:
        if text is None:
            continue
        for secret in secrets:
            for form in secret_forms(secret):
                assert form not in text, f"secret form {form!r} leaked into {text!r}"


def assert_exc_clean(exc: DanubeError, secrets: tuple[str, ...] = (KEY, VALUE)) -> None:
    assert_no_secrets(str(exc), repr(exc), exc.upstream_message, *map(str, exc.args), secrets=secrets)


# --------------------------------------------------------------------------------------------
# 1. The request


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("base_url", "expected_url"),
    [
        ("https://danube.test", "https://danube.test/v1/credentials/store"),
        ("https://danube.test/", "https://danube.test/v1/credentials/store"),
        ("https://danube.test/api/", "https://danube.test/api/v1/credentials/store"),
    ],
)
async def test_request_method_url_headers_and_body(base_url: str, expected_url: str) -> None:
    _, h = await store_ok(ok(), base_url=base_url)
    assert len(h.requests) == 1
    req = h.requests[0]
    assert req.method == "POST"
    assert str(req.url) == expected_url
    assert req.headers["danube-api-key"] == KEY
    assert req.headers["user-agent"] == f"danube-mcp/{__version__}"
    assert req.headers["content-type"] == "application/json"
    assert "danube-org-id" not in req.headers
    assert "authorization" not in req.headers
    assert json.loads(req.content.decode("utf-8")) == {
        "service_id": "svc_openai_001",
        "credential_type": "bearer",
        "credential_value": VALUE,
    }


@pytest.mark.anyio
async def test_body_is_utf8_json_with_exactly_three_fields() -> None:
    request = StoreRequest(service_id="svc_x", credential_type="api_key", credential_value='ключ-"q"-€')
    _, h = await store_ok(ok(), request=request)
    data = json.loads(h.requests[0].content)
    assert set(data) == {"service_id", "credential_type", "credential_value"}
    assert data == {"service_id": "svc_x", "credential_type": "api_key", "credential_value": 'ключ-"q"-€'}


@pytest.mark.anyio
async def test_org_id_header_sent_when_set() -> None:
    _, h = await store_ok(ok(), org_id="org_123")
    assert h.requests[0].headers["danube-org-id"] == "org_123"


@pytest.mark.anyio
async def test_empty_org_id_not_sent() -> None:
    _, h = await store_ok(ok(), org_id="")
    assert "danube-org-id" not in h.requests[0].headers


@pytest.mark.anyio
async def test_per_call_key_overrides_client_key() -> None:
    _, h = await store_ok(ok(), call_key=OTHER_KEY)
    assert h.requests[0].headers.get_list("danube-api-key") == [OTHER_KEY]


@pytest.mark.anyio
async def test_per_call_key_without_client_key() -> None:
    _, h = await store_ok(ok(), api_key=None, call_key=OTHER_KEY)
    assert h.requests[0].headers["danube-api-key"] == OTHER_KEY


@pytest.mark.anyio
async def test_per_call_key_does_not_stick_to_client() -> None:
    async with harness(ok()) as h:
        await h.client.store_credential(REQ, api_key=OTHER_KEY)
        await h.client.store_credential(REQ)
    assert [r.headers["danube-api-key"] for r in h.requests] == [OTHER_KEY, KEY]


# --------------------------------------------------------------------------------------------
# 2. Parsing a 2xx answer


@pytest.mark.anyio
async def test_success_required_fields_only() -> None:
    result, _ = await store_ok(ok())
    assert result == StoreResult(service_id="svc_openai_001", service_name="OpenAI", credential_type="bearer")
    assert result.stored_as is None and result.notice is None and result.deprecated is None


@pytest.mark.anyio
async def test_success_with_optional_fields() -> None:
    result, _ = await store_ok(
        ok(stored_as="value", notice="Plaintext storage is deprecated.", deprecated=True)
    )
    assert result.stored_as == "value"
    assert result.notice == "Plaintext storage is deprecated."
    assert result.deprecated is True


@pytest.mark.anyio
async def test_success_deprecated_false_kept() -> None:
    result, _ = await store_ok(ok(stored_as="reference", deprecated=False))
    assert result.stored_as == "reference"
    assert result.deprecated is False


@pytest.mark.anyio
async def test_success_201_is_success() -> None:
    result, _ = await store_ok(reply(201, OK_BODY))
    assert result.service_name == "OpenAI"


@pytest.mark.anyio
async def test_success_unknown_fields_ignored() -> None:
    result, _ = await store_ok(ok(request_id="r-1", meta={"a": [1, 2]}, extra=None, version=3))
    assert result == StoreResult(service_id="svc_openai_001", service_name="OpenAI", credential_type="bearer")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "extra",
    [
        {"stored_as": 1},
        {"stored_as": None},
        {"notice": ["x"]},
        {"notice": "   "},
        {"deprecated": "yes"},
        {"deprecated": 1},
        {"stored_as": {"v": 1}, "notice": 5, "deprecated": None},
    ],
)
async def test_success_wrongly_typed_optional_fields_ignored(extra: dict[str, Any]) -> None:
    result, _ = await store_ok(ok(**extra))
    assert result == StoreResult(service_id="svc_openai_001", service_name="OpenAI", credential_type="bearer")


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["service_id", "service_name", "credential_type"])
@pytest.mark.parametrize("bad", ["missing", None, 1, ["x"], {"a": 1}, True])
async def test_success_missing_or_wrong_required_field_is_malformed(name: str, bad: Any) -> None:
    body = dict(OK_BODY)
    if bad == "missing":
        del body[name]
    else:
        body[name] = bad
    exc, h = await store_err(reply(200, body), expected=MalformedResponse, max_retries=3)
    assert name in str(exc)
    assert_tidy(exc, 200)
    assert len(h.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"success": False, "error": "plaintext credentials are disabled here"}, "plaintext credentials"),
        (
            {"success": False, "error": {"code": "refused", "message": "plaintext credentials are disabled"}},
            "plaintext credentials",
        ),
        ({"success": False, "message": "plaintext credentials are off"}, "plaintext credentials"),
    ],
)
async def test_success_false_is_store_refused(body: dict[str, Any], reason: str) -> None:
    exc, h = await store_err(reply(200, body), expected=StoreRefused, max_retries=3)
    assert reason in str(exc)
    assert exc.upstream_message is not None and reason in exc.upstream_message
    assert exc.status == 200
    assert exc.attempts == 1
    assert len(h.requests) == 1
    assert_tidy(exc, None)


@pytest.mark.anyio
async def test_success_false_envelope_code_kept() -> None:
    body = {"success": False, "error": {"code": "ingestion_disabled", "message": "no"}}
    exc, _ = await store_err(reply(200, body), expected=StoreRefused)
    assert exc.code == "ingestion_disabled"


@pytest.mark.anyio
async def test_success_false_without_reason() -> None:
    exc, _ = await store_err(reply(200, {"success": False}), expected=StoreRefused)
    assert exc.upstream_message is None
    assert "Nothing was stored" in str(exc)


@pytest.mark.anyio
@pytest.mark.parametrize("success", ["missing", None, "true", 1, "false", 0])
async def test_success_field_missing_or_not_boolean_is_malformed(success: Any) -> None:
    body = {k: v for k, v in OK_BODY.items() if k != "success"}
    if success != "missing":
        body["success"] = success
    exc, _ = await store_err(reply(200, body), expected=MalformedResponse)
    assert type(exc) is MalformedResponse
    assert "success" in str(exc)
    assert_tidy(exc, 200)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"   \n",
        b"OK",
        b"<html><body>Stored!</body></html>",
        b"[]",
        b'[{"success": true}]',
        b'"success"',
        b"null",
        b"42",
        b'{"success": true, "service_id": "svc_openai_001", "service_na',
        b"\xff\xfe\x00garbage",
    ],
)
async def test_unparseable_2xx_is_malformed(content: bytes) -> None:
    exc, h = await store_err(reply(200, content=content), expected=MalformedResponse, max_retries=2)
    assert_tidy(exc, 200)
    assert "may or may not have been stored" in str(exc)
    assert len(h.requests) == 1


def _padded_success(size: int) -> bytes:
    base = json.dumps({**OK_BODY, "pad": ""}).encode()
    body = json.dumps({**OK_BODY, "pad": "x" * (size - len(base))}).encode()
    assert len(body) == size
    return body


@pytest.mark.anyio
async def test_body_exactly_at_limit_is_read() -> None:
    result, _ = await store_ok(reply(200, content=_padded_success(MAX_RESPONSE_BYTES)))
    assert result.service_name == "OpenAI"


@pytest.mark.anyio
async def test_body_over_limit_is_malformed() -> None:
    exc, _ = await store_err(
        reply(200, content=_padded_success(MAX_RESPONSE_BYTES + 1)), expected=MalformedResponse
    )
    assert_tidy(exc, 200)
    assert "KiB" in str(exc)


@pytest.mark.anyio
async def test_streamed_body_over_limit_is_malformed() -> None:
    chunk = b"x" * 65536

    class Chunks(httpx2.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for _ in range(MAX_RESPONSE_BYTES // len(chunk) + 2):
                yield chunk

    def step(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, stream=Chunks())

    exc, _ = await store_err(step, expected=MalformedResponse)
    assert "KiB" in str(exc)


@pytest.mark.anyio
async def test_huge_error_body_gives_status_message() -> None:
    exc, _ = await store_err(reply(400, content=b"x" * (MAX_RESPONSE_BYTES + 10)), expected=ValidationFailed)
    assert_tidy(exc, 400)
    assert exc.upstream_message is None


# --------------------------------------------------------------------------------------------
# 3. Status -> error class


ENVELOPE = {"error": {"code": "some_code", "message": "upstream says no", "details": {}}}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, ValidationFailed),
        (422, ValidationFailed),
        (401, AuthenticationFailed),
        (403, PermissionDenied),
        (404, NotFound),
        (500, ServerError),
        (405, DanubeError),
        (418, DanubeError),
    ],
)
async def test_status_maps_to_class_without_retry(status: int, cls: type[DanubeError]) -> None:
    exc, h = await store_err(reply(status, ENVELOPE), expected=cls, max_retries=3)
    assert type(exc) is cls
    assert exc.status == status
    assert exc.code == "some_code"
    assert exc.upstream_message == "upstream says no"
    assert "upstream says no" in str(exc)
    assert exc.attempts == 1
    assert len(h.requests) == 1
    assert h.sleeps == []
    assert_tidy(exc, status)


@pytest.mark.anyio
@pytest.mark.parametrize("status", [502, 503, 504])
async def test_gateway_statuses_retried_then_server_error(status: int) -> None:
    exc, h = await store_err(reply(status, ENVELOPE), expected=ServerError, max_retries=2)
    assert exc.status == status
    assert exc.attempts == 3
    assert len(h.requests) == 3
    assert len(h.sleeps) == 2
    assert_tidy(exc, status)


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 422])
@pytest.mark.parametrize("via", ["details", "code"])
async def test_central_ingestion_disabled(status: int, via: str) -> None:
    hint = "Use a vault reference; plaintext is disabled on this deployment."
    if via == "details":
        err = {
            "code": "bad_request",
            "message": "refused",
            "details": {"error": "central_credential_ingestion_disabled", "hint": hint},
        }
    else:
        err = {
            "code": "central_credential_ingestion_disabled",
            "message": "refused",
            "details": {"hint": hint},
        }
    exc, h = await store_err(reply(status, {"error": err}), expected=ValidationFailed, max_retries=3)
    text = str(exc)
    assert hint in text
    assert "reference" in text
    assert "dashboard" in text
    assert "vault://" in text and "env://" in text
    assert len(h.requests) == 1
    assert_tidy(exc, status)


@pytest.mark.anyio
async def test_central_ingestion_disabled_without_hint() -> None:
    body = {
        "error": {"code": "x", "message": "m", "details": {"error": "central_credential_ingestion_disabled"}}
    }
    exc, _ = await store_err(reply(400, body), expected=ValidationFailed)
    assert "reference" in str(exc) and "dashboard" in str(exc)
    assert_tidy(exc, 400)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        {"upgrade_url": "https://danubeai.com/upgrade", "message": "Monthly quota exceeded"},
        {
            "error": {
                "code": "plan_limit",
                "message": "Monthly quota exceeded",
                "upgrade_url": "https://danubeai.com/upgrade",
            }
        },
        {
            "error": {
                "code": "plan_limit",
                "message": "Monthly quota exceeded",
                "details": {"upgrade_url": "https://danubeai.com/upgrade"},
            }
        },
    ],
)
async def test_429_with_upgrade_url_is_plan_cap_not_retried(body: dict[str, Any]) -> None:
    exc, h = await store_err(
        reply(429, body, headers={"retry-after": "1"}), expected=RateLimited, max_retries=3
    )
    assert isinstance(exc, RateLimited)
    assert exc.plan_cap is True
    assert "https://danubeai.com/upgrade" in str(exc)
    assert "Monthly quota exceeded" in str(exc)
    assert len(h.requests) == 1
    assert h.sleeps == []
    assert_tidy(exc, 429)


@pytest.mark.anyio
async def test_429_without_upgrade_url_is_retried() -> None:
    exc, h = await store_err(reply(429, {"message": "slow down"}), expected=RateLimited, max_retries=2)
    assert isinstance(exc, RateLimited)
    assert exc.plan_cap is False
    assert exc.retry_after is None
    assert len(h.requests) == 3
    assert exc.attempts == 3
    assert "slow down" in str(exc)
    assert_tidy(exc, 429)


@pytest.mark.anyio
async def test_429_then_success() -> None:
    result, h = await store_ok(reply(429), ok(), max_retries=2)
    assert result.service_id == "svc_openai_001"
    assert len(h.requests) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_not_followed(status: int) -> None:
    exc, h = await store_err(
        reply(status, headers={"location": "https://evil.example/steal"}),
        expected=MalformedResponse,
        max_retries=3,
    )
    assert len(h.requests) == 1
    assert all(r.url.host == "danube.test" for r in h.requests)
    assert "redirect" in str(exc)
    assert_tidy(exc, status)


# --------------------------------------------------------------------------------------------
# 4. Error body shapes


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"error": {"code": "c", "message": "envelope message", "details": {"field": "x"}}},
            "envelope message",
        ),
        (
            {
                "error": {"code": "c", "message": "envelope wins"},
                "detail": "detail loses",
                "message": "msg loses",
            },
            "envelope wins",
        ),
        ({"detail": "detail string"}, "detail string"),
        ({"detail": "detail wins", "message": "message loses"}, "detail wins"),
        ({"message": "plain message"}, "plain message"),
        ({"error": "bare error string"}, "bare error string"),
    ],
)
async def test_error_message_precedence(body: dict[str, Any], expected: str) -> None:
    exc, _ = await store_err(reply(400, body), expected=ValidationFailed)
    assert exc.upstream_message == expected
    assert expected in str(exc)
    for loser in ("detail loses", "msg loses", "message loses"):
        assert loser not in str(exc)
    assert_tidy(exc, 400)


@pytest.mark.anyio
async def test_detail_list_uses_loc_and_msg_never_input() -> None:
    body = {
        "detail": [
            {
                "loc": ["body", "service_id"],
                "msg": "field required",
                "type": "missing",
                "input": "INPUT-MARK",
            },
            {
                "loc": ["body", "credential_value"],
                "msg": "too long",
                "input": {"credential_value": VALUE},
                "ctx": {"given": "CTX-MARK"},
            },
        ]
    }
    exc, _ = await store_err(reply(422, body), expected=ValidationFailed)
    text = str(exc)
    assert "service_id: field required" in text
    assert "credential_value: too long" in text
    assert "INPUT-MARK" not in text and "CTX-MARK" not in text
    assert_exc_clean(exc)
    assert_tidy(exc, 422)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (
            b"<!DOCTYPE html>\n<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n"
            b"<center><h1>502 Bad Gateway</h1></center>\n<hr><center>nginx</center>\n</body>\n</html>\n"
            + b"<p>padding</p>\n"
            * 200,
            {"content-type": "text/html"},
        ),
        (b"", {}),
        (b"Service temporarily unavailable\r\nplease retry\r\n", {"content-type": "text/plain"}),
        (b'{"unrelated": true}', {"content-type": "application/json"}),
        (b'{"error": {"code": 5, "message": ""}}', {"content-type": "application/json"}),
        (b'{"detail": []}', {"content-type": "application/json"}),
    ],
)
@pytest.mark.parametrize(
    ("status", "cls"), [(400, ValidationFailed), (403, PermissionDenied), (503, ServerError)]
)
async def test_non_json_or_empty_error_bodies_give_clean_messages(
    content: bytes, headers: dict[str, str], status: int, cls: type[DanubeError]
) -> None:
    exc, _ = await store_err(reply(status, content=content, headers=headers), expected=cls, max_retries=0)
    assert_tidy(exc, status)
    assert exc.upstream_message is None
    assert "nginx" not in str(exc) and "padding" not in str(exc)


@pytest.mark.anyio
async def test_long_multiline_upstream_message_bounded_to_one_line() -> None:
    message = "line one\nline two\r\n\tline three " + "word " * 500 + "\x00\x07\x1b[31m"
    exc, _ = await store_err(reply(400, {"message": message}), expected=ValidationFailed)
    assert_tidy(exc, 400)
    assert exc.upstream_message is not None
    assert exc.upstream_message.startswith("line one line two line three word")
    assert exc.upstream_message.endswith("...")
    assert all(ch.isprintable() for ch in str(exc))


@pytest.mark.anyio
async def test_control_characters_replaced() -> None:
    exc, _ = await store_err(reply(404, {"detail": "no\x1b[31m such\x00 service"}), expected=NotFound)
    assert exc.upstream_message is not None
    assert "\x1b" not in str(exc) and "\x00" not in str(exc)
    assert all(ch.isprintable() for ch in str(exc))


# --------------------------------------------------------------------------------------------
# 5. Retry policy


@pytest.mark.anyio
@pytest.mark.parametrize("max_retries", [0, 1, 2, 3])
@pytest.mark.parametrize(
    ("step", "cls"),
    [
        (reply(503, {"message": "down"}), ServerError),
        (fail(httpx2.ConnectError, "connection refused"), ConnectionFailed),
        (fail(httpx2.ReadTimeout, "timed out"), UpstreamTimeout),
        (fail(httpx2.RemoteProtocolError, "peer closed"), ConnectionFailed),
        (fail(httpx2.ReadError, "reset"), ConnectionFailed),
    ],
)
async def test_attempt_counts(max_retries: int, step: Step, cls: type[DanubeError]) -> None:
    exc, h = await store_err(step, expected=cls, max_retries=max_retries)
    assert len(h.requests) == max_retries + 1
    assert exc.attempts == max_retries + 1
    assert len(h.sleeps) == max_retries
    assert_tidy(exc)
    # Each attempt resends the same request.
    assert {r.content for r in h.requests} == {h.requests[0].content}
    assert {r.headers["danube-api-key"] for r in h.requests} == {KEY}


@pytest.mark.anyio
async def test_connection_error_message_names_url() -> None:
    exc, _ = await store_err(fail(httpx2.ConnectError, "refused"), expected=ConnectionFailed, max_retries=0)
    assert BASE in str(exc)
    assert exc.status is None


@pytest.mark.anyio
async def test_recovers_after_transient_failures() -> None:
    result, h = await store_ok(
        reply(503), fail(httpx2.ConnectError), fail(httpx2.ReadTimeout), ok(), max_retries=3
    )
    assert result.service_name == "OpenAI"
    assert len(h.requests) == 4
    assert len(h.sleeps) == 3


@pytest.mark.anyio
@pytest.mark.parametrize(
    "step",
    [
        reply(400),
        reply(401),
        reply(403),
        reply(404),
        reply(422),
        reply(500),
        reply(501),
        reply(429, {"upgrade_url": "https://danubeai.com/upgrade"}),
        reply(200, {"success": False, "error": "no"}),
        reply(200, content=b"not json"),
        reply(302, headers={"location": "https://evil.example/"}),
    ],
)
async def test_never_retried(step: Step) -> None:
    exc, h = await store_err(step, max_retries=3)
    assert len(h.requests) == 1
    assert exc.attempts == 1
    assert h.sleeps == []


@pytest.mark.anyio
async def test_retry_after_seconds_honoured() -> None:
    result, h = await store_ok(reply(429, headers={"retry-after": "3"}), ok(), max_retries=2)
    assert result.service_id == "svc_openai_001"
    assert h.sleeps == [3.0]


@pytest.mark.anyio
async def test_retry_after_fractional_and_zero() -> None:
    _, h = await store_ok(
        reply(429, headers={"retry-after": "1.5"}),
        reply(429, headers={"retry-after": "0"}),
        ok(),
        max_retries=2,
    )
    assert h.sleeps == [1.5, 0.0]


@pytest.mark.anyio
async def test_retry_after_at_cap_honoured() -> None:
    _, h = await store_ok(reply(429, headers={"retry-after": str(int(RETRY_AFTER_CAP))}), ok(), max_retries=1)
    assert h.sleeps == [RETRY_AFTER_CAP]


@pytest.mark.anyio
async def test_retry_after_http_date_honoured() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=6), usegmt=True)
    _, h = await store_ok(reply(429, headers={"retry-after": when}), ok(), max_retries=1)
    assert len(h.sleeps) == 1
    assert 4.0 <= h.sleeps[0] <= 6.5


@pytest.mark.anyio
async def test_retry_after_http_date_in_past_means_now() -> None:
    when = format_datetime(datetime.now(UTC) - timedelta(seconds=60), usegmt=True)
    _, h = await store_ok(reply(429, headers={"retry-after": when}), ok(), max_retries=1)
    assert h.sleeps == [0.0]


@pytest.mark.anyio
@pytest.mark.parametrize("value", ["soon", "", "nan", "inf", "-inf"])
async def test_unusable_retry_after_falls_back_to_backoff(value: str) -> None:
    _, h = await store_ok(reply(429, headers={"retry-after": value}), ok(), max_retries=1)
    assert h.sleeps == [0.5 * 0.75]


@pytest.mark.anyio
@pytest.mark.parametrize("seconds", [RETRY_AFTER_CAP + 1, 60, 3600])
async def test_retry_after_above_cap_stops_and_says_how_long(seconds: float) -> None:
    exc, h = await store_err(
        reply(429, {"message": "slow down"}, headers={"retry-after": f"{seconds:g}"}),
        expected=RateLimited,
        max_retries=3,
    )
    assert isinstance(exc, RateLimited)
    assert len(h.requests) == 1
    assert h.sleeps == []
    assert exc.retry_after == seconds
    assert f"{seconds:g} seconds" in str(exc)
    assert_tidy(exc, 429)


@pytest.mark.anyio
async def test_retry_after_http_date_above_cap_says_how_long() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    exc, h = await store_err(reply(429, headers={"retry-after": when}), expected=RateLimited, max_retries=3)
    assert len(h.requests) == 1
    assert any(f"Wait {n} seconds" in str(exc) for n in range(117, 122))


@pytest.mark.anyio
async def test_retry_after_beyond_remaining_budget_stops() -> None:
    exc, h = await store_err(
        reply(429, headers={"retry-after": "8"}), expected=RateLimited, max_retries=3, call_budget=5.0
    )
    assert len(h.requests) == 1
    assert h.sleeps == []
    assert "8 seconds" in str(exc)


@pytest.mark.anyio
async def test_backoff_grows_and_is_capped() -> None:
    h = make_harness(reply(503), max_retries=8, call_budget=1000.0)
    h.client._random = lambda: 1.0
    async with h.client:
        with pytest.raises(ServerError):
            await h.client.store_credential(REQ)
    assert h.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert all(d <= BACKOFF_CAP for d in h.sleeps)
    assert all(a <= b for a, b in zip(h.sleeps, h.sleeps[1:], strict=False))


@pytest.mark.anyio
@pytest.mark.parametrize(("rand", "expected"), [(0.0, [0.25, 0.5, 1.0]), (0.5, [0.375, 0.75, 1.5])])
async def test_backoff_jitter_uses_random(rand: float, expected: list[float]) -> None:
    h = make_harness(fail(httpx2.ConnectError), max_retries=3)
    h.client._random = lambda: rand
    async with h.client:
        with pytest.raises(ConnectionFailed):
            await h.client.store_credential(REQ)
    assert h.sleeps == pytest.approx(expected)


@pytest.mark.anyio
async def test_backoff_that_would_overrun_budget_stops_retrying() -> None:
    h = make_harness(reply(503), max_retries=10, call_budget=1.0)
    h.client._random = lambda: 1.0
    async with h.client:
        with pytest.raises(ServerError) as info:
            await h.client.store_credential(REQ)
    # 0.5 s fits in the 1 s budget; the next 1.0 s backoff does not.
    assert h.sleeps == [0.5]
    assert len(h.requests) == 2
    assert info.value.attempts == 2


@pytest.mark.anyio
async def test_total_budget_bounds_slow_upstream() -> None:
    async def slow(request: httpx2.Request) -> httpx2.Response:
        await anyio.sleep(5)
        return httpx2.Response(200, json=OK_BODY)

    h = make_harness(slow, timeout=0.2, call_budget=0.5, max_retries=5)
    h.client._sleep = anyio.sleep
    started = time.monotonic()
    async with h.client:
        with pytest.raises(UpstreamTimeout) as info:
            await h.client.store_credential(REQ)
    elapsed = time.monotonic() - started
    assert elapsed < 0.5 + 1.0
    assert len(h.requests) >= 1
    assert info.value.attempts >= 1
    assert_tidy(info.value)


@pytest.mark.anyio
async def test_per_attempt_timeout_bounds_each_attempt() -> None:
    async def slow(request: httpx2.Request) -> httpx2.Response:
        await anyio.sleep(5)
        return httpx2.Response(200, json=OK_BODY)

    h = make_harness(slow, timeout=0.2, call_budget=30.0, max_retries=0)
    started = time.monotonic()
    async with h.client:
        with pytest.raises(UpstreamTimeout) as info:
            await h.client.store_credential(REQ)
    assert time.monotonic() - started < 0.2 + 1.0
    assert len(h.requests) == 1
    assert info.value.attempts == 1


@pytest.mark.anyio
async def test_zero_budget_times_out_without_request() -> None:
    exc, h = await store_err(ok(), expected=UpstreamTimeout, call_budget=0.0, max_retries=2)
    assert h.requests == []
    assert exc.attempts >= 1


# --------------------------------------------------------------------------------------------
# 6. Scrubbing


def _both(k: str, v: str) -> str:
    return f"key {k} is invalid for value {v}"


ECHOES: list[tuple[str, int, Callable[[str, str], Any]]] = [
    ("envelope-raw", 400, lambda k, v: {"error": {"code": "bad", "message": _both(k, v)}}),
    (
        "envelope-json-escaped",
        400,
        lambda k, v: {
            "error": {
                "code": "bad",
                "message": f"body was {json.dumps({'credential_value': v, 'key': k})} / "
                f"{json.dumps({'credential_value': v}, ensure_ascii=False)}",
            }
        },
    ),
    (
        "details-hint",
        400,
        lambda k, v: {
            "error": {
                "code": "x",
                "message": "refused",
                "details": {
                    "error": "central_credential_ingestion_disabled",
                    "hint": _both(k, v),
                    "value": v,
                },
            }
        },
    ),
    (
        "detail-list-msg",
        422,
        lambda k, v: {"detail": [{"loc": ["body", "credential_value"], "msg": _both(k, v), "input": v}]},
    ),
    ("detail-string", 401, lambda k, v: {"detail": _both(k, v)}),
    ("message", 403, lambda k, v: {"message": _both(k, v)}),
    ("error-string", 404, lambda k, v: {"error": _both(k, v)}),
    (
        "rate-limited",
        429,
        lambda k, v: {"message": _both(k, v), "upgrade_url": f"https://x.test/up?k={k}&v={v}"},
    ),
    ("server", 500, lambda k, v: {"error": {"code": "boom", "message": _both(k, v)}}),
    ("teapot", 418, lambda k, v: {"message": _both(k, v)}),
    ("refused", 200, lambda k, v: {"success": False, "error": _both(k, v)}),
    (
        "refused-envelope",
        200,
        lambda k, v: {"success": False, "error": {"code": "no", "message": _both(k, v)}},
    ),
    ("truncated", 400, lambda k, v: {"message": f"key {k[:20]}... value {v[:20]}..."}),
    ("truncated-key-only", 401, lambda k, v: {"detail": f"unknown key {k[:20]}"}),
    ("truncated-value-only", 422, lambda k, v: {"detail": [{"loc": ["body"], "msg": f"bad {v[:20]}"}]}),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "build"), [(s, b) for _, s, b in ECHOES], ids=[n for n, _, _ in ECHOES])
async def test_echoed_secrets_scrubbed_from_errors(status: int, build: Callable[[str, str], Any]) -> None:
    exc, _ = await store_err(reply(status, build(KEY, VALUE)), max_retries=0)
    assert exc.status == status
    assert_exc_clean(exc)
    assert_tidy(exc, None)


@pytest.mark.anyio
async def test_echoed_override_key_scrubbed() -> None:
    exc, _ = await store_err(
        reply(401, {"detail": f"bad key {OTHER_KEY}"}), expected=AuthenticationFailed, call_key=OTHER_KEY
    )
    assert_exc_clean(exc, secrets=(OTHER_KEY, VALUE))
    assert REDACTED in str(exc)


@pytest.mark.anyio
async def test_echoed_secret_replaced_by_marker_keeping_the_rest() -> None:
    exc, _ = await store_err(reply(400, {"message": f"value {VALUE} rejected"}), expected=ValidationFailed)
    assert exc.upstream_message == f"value {REDACTED} rejected"


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["service_name", "service_id", "credential_type", "notice", "stored_as"])
async def test_echoed_secrets_scrubbed_from_success(where: str) -> None:
    result, _ = await store_ok(ok(**{where: _both(KEY, VALUE)}))
    text = repr(result) + json.dumps(result.structured(), ensure_ascii=False)
    assert_no_secrets(text, getattr(result, where))


@pytest.mark.anyio
async def test_truncated_echo_in_success_notice_scrubbed() -> None:
    result, _ = await store_ok(ok(notice=f"stored {VALUE[:20]} for {KEY[:20]}"))
    assert_no_secrets(result.notice, repr(result))


@pytest.mark.anyio
async def test_secret_with_double_space_echoed_verbatim_is_scrubbed_long() -> None:
    value = "sk-CANARY-LONG  two-spaces-0123456789abcdef"
    request = StoreRequest(service_id="svc", credential_type="api_key", credential_value=value)
    exc, _ = await store_err(reply(400, {"message": f"bad value {value}"}), request=request)
    assert "two-spaces-0123456789abcdef" not in str(exc)


@pytest.mark.anyio
@pytest.mark.parametrize("value", ["pw  CANARY-77", "pw\u00a0CANARY-77"])
async def test_short_secret_with_unusual_whitespace_echoed_verbatim_is_scrubbed(value: str) -> None:
    request = StoreRequest(service_id="svc", credential_type="api_key", credential_value=value)
    exc, _ = await store_err(reply(400, {"message": f"bad value {value} here"}), request=request)
    assert "CANARY-77" not in str(exc)


@pytest.mark.anyio
async def test_reason_phrase_echo_scrubbed() -> None:
    exc, _ = await store_err(
        reply(401, content=b"", extensions={"reason_phrase": f"Bad key {KEY}".encode()}),
        expected=AuthenticationFailed,
    )
    assert_exc_clean(exc)


@pytest.mark.anyio
async def test_error_code_echo_scrubbed() -> None:
    """Regression: error.code used to be kept raw and shown by repr()."""
    exc, _ = await store_err(
        reply(400, {"error": {"code": f"invalid_key:{KEY}", "message": "no"}}), expected=ValidationFailed
    )
    assert_exc_clean(exc)
    assert exc.code is None or KEY not in exc.code


def test_scrub_raw_and_json_escaped_variants() -> None:
    text = (
        f"raw {VALUE} | ascii {json.dumps(VALUE)[1:-1]} | utf8 {json.dumps(VALUE, ensure_ascii=False)[1:-1]}"
        f" | key {KEY}"
    )
    out = scrub(text, [KEY, VALUE])
    assert out == f"raw {REDACTED} | ascii {REDACTED} | utf8 {REDACTED} | key {REDACTED}"


def test_scrub_ignores_empty_and_none() -> None:
    assert scrub("nothing secret here", [None, ""]) == "nothing secret here"
    assert scrub("", [KEY]) == ""


def test_scrub_leaves_unrelated_text_alone() -> None:
    assert scrub("service svc_openai_001 not found", [KEY, VALUE]) == "service svc_openai_001 not found"


def test_scrub_short_secret_exact_match() -> None:
    assert scrub("pw=hunter2;", ["hunter2"]) == f"pw={REDACTED};"


def test_scrub_overlapping_secrets_longest_first() -> None:
    short = "sk-CANARY-KEY-7f3a9c2e"
    assert scrub(f"a {KEY} b {short} c", [short, KEY]) == f"a {REDACTED} b {REDACTED} c"


@pytest.mark.parametrize("fragment", [KEY[:20], KEY[-20:], KEY[10:30], VALUE[:20], VALUE[15:25]])
def test_scrub_drops_text_with_fragment(fragment: str) -> None:
    assert scrub(f"prefix {fragment} suffix", [KEY, VALUE]) == REDACTED


@settings(max_examples=200, deadline=None)
@given(
    secret=st.text(
        st.characters(exclude_characters="[]", exclude_categories=["Cs"]), min_size=16, max_size=60
    ),
    before=st.text(max_size=30),
    after=st.text(max_size=30),
    cut=st.integers(min_value=8, max_value=60),
)
def test_scrub_property_no_fragment_survives(secret: str, before: str, after: str, cut: int) -> None:
    for echoed in (secret, secret[:cut], json.dumps(secret)[1:-1]):
        out = scrub(before + echoed + after, [secret])
        assert secret not in out
        assert not any(secret[i : i + 8] in out for i in range(len(secret) - 7))


def test_reprs_do_not_show_secrets() -> None:
    assert VALUE not in repr(REQ)
    assert VALUE not in str(REQ)
    client = DanubeClient(
        base_url=BASE, api_key=KEY, transport=httpx2.MockTransport(lambda r: httpx2.Response(200))
    )
    assert KEY not in repr(client)
    assert KEY not in str(client)
    assert "set" in repr(client)


# --------------------------------------------------------------------------------------------
# 7. Missing key


@pytest.mark.anyio
@pytest.mark.parametrize("client_key", [None, ""])
async def test_missing_key_sends_nothing(client_key: str | None) -> None:
    exc, h = await store_err(ok(), expected=MissingApiKey, api_key=client_key)
    assert h.requests == []
    assert "API key" in str(exc)


def test_has_default_key() -> None:
    transport = httpx2.MockTransport(lambda r: httpx2.Response(200))
    assert DanubeClient(base_url=BASE, api_key=KEY, transport=transport).has_default_key is True
    assert DanubeClient(base_url=BASE, transport=transport).has_default_key is False


# --------------------------------------------------------------------------------------------
# 8. One client, one pool, many calls


@pytest.mark.anyio
async def test_many_calls_through_one_client() -> None:
    async with harness(ok()) as h:
        http = h.client._client()
        for _ in range(5):
            await h.client.store_credential(REQ)
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(h.client.store_credential, REQ)
        assert h.client._client() is http
    assert len(h.requests) == 15
    assert h.client.closed


# --------------------------------------------------------------------------------------------
# Error classes


@pytest.mark.parametrize(
    ("cls", "kind", "retryable"),
    [
        (ValidationFailed, "validation", False),
        (AuthenticationFailed, "authentication", False),
        (PermissionDenied, "permission", False),
        (NotFound, "not_found", False),
        (RateLimited, "rate_limited", True),
        (ServerError, "server", False),
        (ConnectionFailed, "connection", True),
        (UpstreamTimeout, "timeout", True),
        (MalformedResponse, "malformed_response", False),
        (StoreRefused, "refused", False),
        (MissingApiKey, "missing_api_key", False),
        (PaymentRequired, "payment_required", False),
        (ConfirmationRequired, "confirmation_required", False),
    ],
)
def test_error_classes(cls: type[DanubeError], kind: str, retryable: bool) -> None:
    assert issubclass(cls, DanubeError)
    assert cls.kind == kind
    assert cls.retryable is retryable
    exc = cls("message", status=400, code="c", upstream_message="u", attempts=2)
    assert str(exc) == "message"
    assert (exc.status, exc.code, exc.upstream_message, exc.attempts) == (400, "c", "u", 2)


def test_url_encoded_echo_is_scrubbed() -> None:
    from urllib.parse import quote

    secret = "p@ss word/+=&?#"
    text = f"see https://x.example/?v={quote(secret, safe='')} and {secret}"
    out = scrub(text, [secret])
    assert quote(secret, safe="") not in out and secret not in out


@pytest.mark.anyio
async def test_a_gzip_encoded_answer_is_decoded() -> None:
    """The answer is read from the transport's byte stream as it is, unless it carries a content
    coding: then it is decoded first, as before."""
    import gzip

    def step(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200, headers={"content-encoding": "gzip"}, content=gzip.compress(json.dumps(OK_BODY).encode())
        )

    async with harness(step) as h:
        result = await h.client.store_credential(REQ)
    assert result.service_name == "OpenAI"
