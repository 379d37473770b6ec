"""Danube's newer contract through the client (402, 409 with a confirm_token, the deprecation notice),
the strict mode used after a secure-input store, and encoded echoes of canaries in real answers.

Driven through ``httpx2.MockTransport``; the client's sleep is a recorder, so nothing waits.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx2
import pytest

from danube_mcp.danube.client import (
    ConfirmationRequired,
    DanubeClient,
    DanubeError,
    PaymentRequired,
    StoreRefused,
    ValidationFailed,
)
from danube_mcp.danube.redact import REDACTED, alnum_form
from danube_mcp.tool.schema import StoreRequest, StoreResult
from test_scrubber import ENCODINGS

KEY = "sk-CANARY-CONTRACT-KEY-51c0ffee9a7d3b2e"
VALUE = "CanaryContractValue-77aa"
SHORT_VALUE = "Zq8pW"
CONFIRM = "cft_CANARY_8f7e6d5c4b3a29180716"
REQ = StoreRequest(service_id="svc_openai_001", credential_type="bearer", credential_value=VALUE)
OK: dict[str, Any] = {
    "success": True,
    "service_id": "svc_openai_001",
    "service_name": "OpenAI",
    "credential_type": "bearer",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Reply = Callable[[httpx2.Request], httpx2.Response]


def client_for(reply: Reply, *, api_key: str = KEY, seen: list[httpx2.Request] | None = None) -> DanubeClient:
    def handler(request: httpx2.Request) -> httpx2.Response:
        if seen is not None:
            seen.append(request)
        return reply(request)

    client = DanubeClient(
        base_url="https://danube.test",
        api_key=api_key,
        transport=httpx2.MockTransport(handler),
        max_retries=3,
    )

    async def no_sleep(delay: float) -> None:
        return None

    client._sleep = no_sleep
    return client


def json_reply(status: int, body: Any, reason: str | None = None) -> Reply:
    ext = {"reason_phrase": reason.encode()} if reason else None
    return lambda request: httpx2.Response(status, json=body, extensions=ext)


async def store(
    reply: Reply, *, request: StoreRequest = REQ, strict: bool = False, api_key: str = KEY
) -> tuple[StoreResult | DanubeError, int]:
    seen: list[httpx2.Request] = []
    async with client_for(reply, api_key=api_key, seen=seen) as client:
        try:
            return await client.store_credential(request, strict_fields=strict), len(seen)
        except DanubeError as exc:
            return exc, len(seen)


def shown(outcome: StoreResult | DanubeError) -> str:
    """Every text the outcome can put in front of a model, a log or a person."""
    if isinstance(outcome, DanubeError):
        return " | ".join(
            map(str, (outcome, repr(outcome), outcome.upstream_message, outcome.code, *outcome.args))
        )
    return repr(outcome) + json.dumps(outcome.structured(), ensure_ascii=False)


def assert_no_canary(text: str, *secrets: str) -> None:
    for secret in secrets or (KEY, VALUE, CONFIRM):
        norm = alnum_form(secret)
        assert secret not in text
        assert not any(norm[i : i + 8] in alnum_form(text) for i in range(len(norm) - 7)), (secret, text)
        assert base64.b64encode(secret.encode()).decode()[:12] not in text


# --------------------------------------------------------------------------------------------
# 402 payment required


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        {"error": {"code": "payment_required", "message": "Payment required"}},
        {"detail": "Payment required"},
        None,
    ],
)
async def test_402_is_payment_required_and_not_retried(body: Any) -> None:
    outcome, requests = await store(json_reply(402, body))
    assert isinstance(outcome, PaymentRequired)
    assert requests == 1
    assert outcome.retryable is False and outcome.kind == "payment_required"
    text = str(outcome)
    assert "HTTP 402" in text and "billing" in text and "Danube dashboard" in text
    assert "do not retry" in text.lower()


@pytest.mark.anyio
async def test_402_echo_of_secrets_is_scrubbed() -> None:
    b64 = base64.b64encode(f"user:{KEY}".encode()).decode()
    outcome, _ = await store(json_reply(402, {"message": f"no funds for Basic {b64} / {VALUE.upper()}"}))
    assert isinstance(outcome, PaymentRequired)
    assert_no_canary(shown(outcome))


# --------------------------------------------------------------------------------------------
# 409 confirmation required


CONFIRM_BODIES: list[dict[str, Any]] = [
    {
        "error": {
            "code": "confirmation_required",
            "message": "Confirm this action",
            "details": {"confirm_token": CONFIRM},
        }
    },
    {"error": "confirmation_required", "confirm_token": CONFIRM, "expires_in": 300},
    {"detail": {"error": "confirmation_required", "confirm_token": CONFIRM, "message": f"token {CONFIRM}"}},
    {
        "error": {
            "code": "confirmation_required",
            "message": f"use {base64.b64encode(CONFIRM.encode()).decode()}",
        }
    },
    {
        "error": {
            "code": "confirmation_required",
            "message": f"confirm with {CONFIRM[:14]}",
            "confirm_token": CONFIRM,
        }
    },
]


@pytest.mark.anyio
@pytest.mark.parametrize("body", CONFIRM_BODIES)
async def test_409_is_confirmation_required_never_retried_token_never_shown(body: dict[str, Any]) -> None:
    outcome, requests = await store(json_reply(409, body))
    assert isinstance(outcome, ConfirmationRequired)
    assert requests == 1
    assert outcome.retryable is False and outcome.kind == "confirmation_required"
    text = str(outcome)
    assert "HTTP 409" in text and "confirm" in text.lower() and "Do not retry" in text
    assert "minutes" in text
    assert_no_canary(shown(outcome) + repr(vars(outcome)))


@pytest.mark.anyio
async def test_409_expiry_is_read() -> None:
    body = {
        "error": {"code": "confirmation_required", "details": {"confirm_token": CONFIRM, "expires_in": 120}}
    }
    outcome, _ = await store(json_reply(409, body))
    assert isinstance(outcome, ConfirmationRequired)
    assert outcome.expires_in == 120 and "2 minutes" in str(outcome)


@pytest.mark.anyio
async def test_409_without_confirmation_is_a_plain_conflict() -> None:
    outcome, requests = await store(json_reply(409, {"message": "conflicting update"}))
    assert type(outcome) is DanubeError and requests == 1
    assert "HTTP 409" in str(outcome) and "conflicting update" in str(outcome)


# --------------------------------------------------------------------------------------------
# The deprecation notice


@pytest.mark.anyio
async def test_notice_and_deprecated_are_surfaced() -> None:
    notice = "Plaintext credentials are deprecated; store a vault:// or env:// reference instead."
    outcome, _ = await store(
        json_reply(200, {**OK, "deprecated": True, "notice": notice, "stored_as": "value"})
    )
    assert isinstance(outcome, StoreResult)
    assert outcome.notice == notice and outcome.deprecated is True and outcome.stored_as == "value"
    assert outcome.structured()["notice"] == notice


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", ["b64", "spaced", "html-hex", "hex-upper", "zero-width-U+200B", "upper"])
async def test_notice_echoing_a_secret_is_replaced_by_our_own_words(encoding: str) -> None:
    notice = f"Plaintext value {ENCODINGS[encoding](VALUE)} is deprecated"
    outcome, _ = await store(json_reply(200, {**OK, "deprecated": True, "notice": notice}))
    assert isinstance(outcome, StoreResult)
    assert outcome.notice is not None and "deprecates storing plaintext" in outcome.notice
    assert_no_canary(shown(outcome))
    outcome, _ = await store(json_reply(200, {**OK, "notice": notice}))
    assert isinstance(outcome, StoreResult) and outcome.notice is None


@pytest.mark.anyio
async def test_stored_as_only_from_its_enum() -> None:
    outcome, _ = await store(json_reply(200, {**OK, "stored_as": f"value:{VALUE}"}))
    assert isinstance(outcome, StoreResult) and outcome.stored_as is None


# --------------------------------------------------------------------------------------------
# Strict mode: after a secure-input store, no upstream free text at all


@pytest.mark.anyio
async def test_strict_success_keeps_only_fixed_fields() -> None:
    body = {
        **OK,
        "service_id": "svc_other",
        "credential_type": "api_key",
        "notice": "Plaintext credentials are deprecated.",
        "deprecated": True,
        "stored_as": "value",
    }
    outcome, _ = await store(json_reply(200, body), strict=True)
    assert isinstance(outcome, StoreResult)
    assert outcome.service_id == REQ.service_id and outcome.credential_type == REQ.credential_type
    assert outcome.service_name == "OpenAI"
    assert outcome.notice is None and outcome.deprecated is True


@pytest.mark.anyio
@pytest.mark.parametrize(
    "name", [SHORT_VALUE, f"Svc {SHORT_VALUE.lower()}", " ".join(SHORT_VALUE), SHORT_VALUE[:4] + "x"]
)
async def test_strict_service_name_with_a_short_value_is_withheld(name: str) -> None:
    request = StoreRequest(service_id="svc_x", credential_type="api_key", credential_value=SHORT_VALUE)
    outcome, _ = await store(json_reply(200, {**OK, "service_name": name}), request=request, strict=True)
    assert isinstance(outcome, StoreResult)
    assert outcome.service_name == REDACTED
    assert_no_canary(shown(outcome), KEY)
    assert SHORT_VALUE.lower() not in alnum_form(shown(outcome))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, {"error": {"code": "bad_thing", "message": "upstream explains at length"}}),
        (401, {"detail": "upstream explains at length"}),
        (403, {"message": "upstream explains at length"}),
        (404, {"detail": [{"loc": ["body", "service_id"], "msg": "upstream explains at length"}]}),
        (429, {"message": "upstream explains at length", "upgrade_url": "https://up.example/x"}),
        (500, {"error": {"code": "boom", "message": "upstream explains at length"}}),
        (200, {"success": False, "error": "upstream explains at length"}),
        (
            400,
            {
                "detail": {
                    "error": "central_credential_ingestion_disabled",
                    "hint": "upstream explains at length",
                }
            },
        ),
    ],
)
async def test_strict_errors_carry_no_upstream_text(status: int, body: dict[str, Any]) -> None:
    reply = json_reply(status, body, reason="Upstream Reason Text")
    outcome, _ = await store(reply, strict=True)
    assert isinstance(outcome, DanubeError)
    text = shown(outcome)
    assert "upstream explains" not in text and "Upstream Reason" not in text and "up.example" not in text
    assert outcome.upstream_message is None
    assert outcome.code in (None, "central_credential_ingestion_disabled")
    if status == 200:
        assert isinstance(outcome, StoreRefused)
    if "central" in json.dumps(body):
        assert isinstance(outcome, ValidationFailed) and "plaintext" in str(outcome)


@pytest.mark.anyio
async def test_non_strict_errors_still_explain() -> None:
    outcome, _ = await store(json_reply(403, {"message": "upstream explains at length"}))
    assert isinstance(outcome, DanubeError) and "upstream explains at length" in str(outcome)


# --------------------------------------------------------------------------------------------
# Encoded echoes through the whole client


ECHO_ENCODINGS = [n for n in ENCODINGS if not n.startswith("basic-") or n.endswith("-nopad")]


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", ECHO_ENCODINGS)
@pytest.mark.parametrize("where", ["message", "reason", "code", "service_name", "service_id"])
async def test_encoded_echo_never_leaves_the_client(encoding: str, where: str) -> None:
    echo = f"{ENCODINGS[encoding](KEY)} and {ENCODINGS[encoding](VALUE)}"
    if where == "message":
        reply = json_reply(400, {"error": {"code": "bad", "message": f"rejected {echo}"}})
    elif where == "reason":
        reply = json_reply(401, None, reason=f"Bad {echo}"[:200])
    elif where == "code":
        reply = json_reply(422, {"error": {"code": echo, "message": "no"}})
    else:
        reply = json_reply(200, {**OK, where: echo})
    outcome, _ = await store(reply)
    assert_no_canary(shown(outcome), KEY, VALUE)


@pytest.mark.anyio
async def test_short_key_echoed_in_success_fields_is_withheld() -> None:
    short_key = "dk_9QzT"
    for name in (short_key, f"Svc {short_key.upper()}", "-".join(short_key)):
        outcome, _ = await store(json_reply(200, {**OK, "service_name": name}), api_key=short_key)
        assert isinstance(outcome, StoreResult)
        assert outcome.service_name == REDACTED, name
