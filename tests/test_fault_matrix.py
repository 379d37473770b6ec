"""The fault matrix: every way Danube (or the network in front of it) can misbehave, driven through
a real ``danube-mcp`` process over stdio (every row) and streamable HTTP (a representative subset).

For each row the test asserts the tool result class and message, the exact number of upstream
attempts, that the call ends inside the configured total budget, that no canary secret appears in
anything the server emits (the result, stdout / HTTP response bodies, stderr at DEBUG), and that
the next normal call succeeds.

One upstream, one stdio server and one HTTP server serve the whole module; each row re-scripts the
upstream. ``docs/fault-matrix.md`` is generated from ``CASES``, and a test keeps the two in step::

    PYTHONPATH=src python tests/test_fault_matrix.py > docs/fault-matrix.md

Policy under test (``DANUBE_TIMEOUT=1``, ``DANUBE_MCP_CALL_BUDGET=2.5``, ``DANUBE_MAX_RETRIES=2``):
502/503/504, 429 without ``upgrade_url``, connection failures and timeouts are retried up to
1 + 2 attempts, with backoff 0.5 s then 1 s (each jittered down by up to half), or the Retry-After
delay when it is at most 10 s; a retry is skipped when its wait would end past the budget.
Everything else is answered after one attempt.

Why the timeout rows make exactly 2 attempts, deterministically: attempt 1 times out at 1.0 s, the
first backoff is 0.25-0.5 s, so attempt 2 starts by 1.5 s and, limited to min(1 s, what is left of
the budget), ends at 2.25-2.5 s; the second backoff is at least 0.5 s, which would end past 2.5 s,
so the client stops there, before the retry limit is reached.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

import anyio
import httpx2
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from anyio.streams.memory import MemoryObjectReceiveStream
from mcp import Client, StdioServerParameters, types
from mcp.client import Transport
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage
from mcp_types.version import LATEST_HANDSHAKE_VERSION

from procs import MODERN, REPO, Captured, HttpServer, child_env
from upstream import FakeUpstream, Recorded, Reply

API_KEY = "dk-CANARY-fault-key-5f3a9c0e7b21d846"
SECRET = "sk-CANARY-fault-value-0d9e8f7a6b5c4d3e"
CANARIES = (API_KEY, SECRET)
TOOL = "store_credential"
ARGS = {"service_id": "svc_fault_001", "credential_type": "api_key", "credential_value": SECRET}

TIMEOUT = 1.0
BUDGET = 2.5
MAX_RETRIES = 2
RETRIED = 1 + MAX_RETRIES  # attempts of a retryable fault that never clears up
BUDGET_BOUND = 2  # attempts of a timeout on every attempt: see the module docstring
# Elapsed time is bounded by the budget plus this: process, MCP and scheduling overhead on a loaded
# CI machine. A bound, not a performance figure.
SLACK = 1.5
FRAGMENT = 16  # no run of this many characters of a canary may appear anywhere either

DOC = REPO / "docs" / "fault-matrix.md"
TEN_MB = 10 * 1024 * 1024


def envelope(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """Danube's documented error envelope."""
    return {"error": {"code": code, "message": message, **extra}}


OK_FIELDS = {"service_id": "svc_fault_001", "service_name": "Fault Service", "credential_type": "api_key"}
BIG_200 = b'{"success": true, "pad": "' + b"x" * TEN_MB + b'"}'
BIG_HTML = b"<html><body>" + b"<p>busy</p>" * (TEN_MB // 11) + b"</body></html>"
ECHO = "could not store {body} for key {key}"


@dataclass(frozen=True)
class Case:
    """One row: what the upstream does, and what the tool call must come to."""

    id: str
    fault: str  # what the upstream does, for the table
    replies: tuple[Reply, ...]  # answers in order; the last one repeats for every later attempt
    outcome: str  # "ok", or the error kind the server logs (DanubeError.kind)
    gist: str  # must appear in the tool result text
    attempts: int
    http: bool = False  # also run over streamable HTTP
    pattern: str | None = None  # a regex the text must match too, where the gist cannot be exact
    min_elapsed: float = 0.0  # proves a wait was honoured
    xfail: str | None = None  # a known server bug: the row states the correct behaviour
    why: str = ""  # the policy behind the attempt count, for the table


CASES: tuple[Case, ...] = (
    # -- Danube's error envelope, status by status --------------------------------------------
    Case(
        "envelope-400",
        "400 + error envelope",
        (Reply(400, envelope("invalid_request", "service_id is malformed")),),
        "validation",
        "Danube rejected the request (HTTP 400): service_id is malformed",
        1,
    ),
    Case(
        "envelope-401",
        "401 + error envelope",
        (Reply(401, envelope("invalid_api_key", "API key revoked")),),
        "authentication",
        "Danube rejected the API key (HTTP 401): API key revoked",
        1,
        http=True,
    ),
    Case(
        "envelope-403",
        "403 + error envelope",
        (Reply(403, envelope("forbidden", "key lacks credentials:write")),),
        "permission",
        "refused this action for the API key (HTTP 403): key lacks credentials:write",
        1,
    ),
    Case(
        "envelope-404",
        "404 + error envelope",
        (Reply(404, envelope("service_not_found", "no such service")),),
        "not_found",
        "Danube does not know this service_id (HTTP 404): no such service",
        1,
    ),
    Case(
        "envelope-409",
        "409 + error envelope (a status with no special meaning)",
        (Reply(409, envelope("conflict", "busy elsewhere")),),
        "error",
        "Danube rejected the request (HTTP 409): busy elsewhere",
        1,
    ),
    Case(
        "envelope-422",
        "422 + error envelope",
        (Reply(422, envelope("unprocessable", "credential_type not allowed for this service")),),
        "validation",
        "(HTTP 422): credential_type not allowed for this service",
        1,
    ),
    Case(
        "envelope-500",
        "500 + error envelope",
        (Reply(500, envelope("internal", "database unavailable")),),
        "server",
        "Danube had a server problem (HTTP 500): database unavailable",
        1,
        why="500 is not retried: the failure may be deterministic",
    ),
    Case(
        "envelope-501",
        "501 + error envelope",
        (Reply(501, envelope("not_implemented", "operation switched off")),),
        "server",
        "(HTTP 501): operation switched off",
        1,
    ),
    Case(
        "envelope-502",
        "502 + error envelope, every attempt",
        (Reply(502, envelope("bad_gateway", "upstream unreachable")),),
        "server",
        "(HTTP 502): upstream unreachable",
        RETRIED,
        why="retried: 502/503/504",
    ),
    Case(
        "envelope-503",
        "503 + error envelope, every attempt",
        (Reply(503, envelope("unavailable", "maintenance")),),
        "server",
        "(HTTP 503): maintenance",
        RETRIED,
        http=True,
        why="retried: 502/503/504",
    ),
    Case(
        "envelope-504",
        "504 + error envelope, every attempt",
        (Reply(504, envelope("gateway_timeout", "timed out")),),
        "server",
        "(HTTP 504): timed out",
        RETRIED,
        why="retried: 502/503/504",
    ),
    Case(
        "redirect-302",
        "302 with a Location elsewhere",
        (Reply(302, b"", headers={"location": "https://evil.example/steal"}),),
        "malformed_response",
        "redirects are not followed so the API key cannot leak",
        1,
        why="redirects are never followed",
    ),
    Case(
        "recovers-503",
        "503 once, then a normal answer",
        (Reply(503, envelope("unavailable", "blip")), Reply()),
        "ok",
        "Stored the API key for Service svc_fault_001",
        2,
        why="the retry succeeds",
    ),
    # -- FastAPI-style detail -------------------------------------------------------------------
    Case(
        "detail-string-404",
        'FastAPI {"detail": "..."} string',
        (Reply(404, {"detail": "Service not found"}),),
        "not_found",
        "(HTTP 404): Service not found",
        1,
    ),
    Case(
        "detail-list-422",
        "FastAPI validation list whose `input` holds the secret",
        (
            Reply(
                422,
                {
                    "detail": [
                        {"type": "value_error", "loc": ["body", "credential_value"], "msg": "too short"},
                        {"type": "missing", "loc": ["body", "scope"], "msg": "Field required", "input": ARGS},
                    ]
                },
            ),
        ),
        "validation",
        "(HTTP 422): credential_value: too short; scope: Field required",
        1,
        http=True,
    ),
    Case(
        "detail-dict-ingestion-off",
        "400 with the envelope nested in `detail` (plaintext ingestion disabled)",
        (
            Reply(
                400,
                {
                    "detail": {
                        "error": "central_credential_ingestion_disabled",
                        "hint": "Use a vault reference.",
                    }
                },
            ),
        ),
        "validation",
        "does not accept plaintext credentials (HTTP 400). Use a vault reference.",
        1,
    ),
    # -- Bodies that are not JSON ---------------------------------------------------------------
    Case(
        "text-500",
        "500, text/plain body",
        (
            Reply(
                500,
                b"Internal Server Error",
                headers={"content-type": "text/plain"},
                reason="Internal Server Error",
            ),
        ),
        "server",
        "(HTTP 500) (Internal Server Error)",
        1,
    ),
    Case(
        "html-502",
        "502, HTML page from a proxy, every attempt",
        (
            Reply(
                502,
                b"<html><h1>502 Bad Gateway</h1></html>",
                {"content-type": "text/html"},
                reason="Bad Gateway",
            ),
        ),
        "server",
        "(HTTP 502) (Bad Gateway)",
        RETRIED,
        why="retried: 502/503/504",
    ),
    Case(
        "html-403",
        "403, HTML page from a WAF",
        (Reply(403, b"<html>Request blocked</html>", {"content-type": "text/html"}, reason="Forbidden"),),
        "permission",
        "(HTTP 403) (Forbidden)",
        1,
    ),
    Case(
        "empty-401",
        "401, empty body",
        (Reply(401, b"", reason="Unauthorized"),),
        "authentication",
        "Danube rejected the API key (HTTP 401) (Unauthorized)",
        1,
    ),
    Case(
        "empty-204",
        "204, empty body",
        (Reply(204, b"", reason="No Content"),),
        "malformed_response",
        "(HTTP 204) was not a JSON object. The credential may or may not have been stored",
        1,
    ),
    # -- 429 and Retry-After --------------------------------------------------------------------
    Case(
        "429-bare",
        "429, no Retry-After, no upgrade_url, every attempt",
        (Reply(429, envelope("rate_limited", "slow down")),),
        "rate_limited",
        "(HTTP 429): slow down. Wait a minute and try again.",
        RETRIED,
        why="retried with backoff",
    ),
    Case(
        "429-retry-after-1",
        "429, Retry-After: 1, every attempt",
        (Reply(429, envelope("rate_limited", "slow down"), {"retry-after": "1"}),),
        "rate_limited",
        "(HTTP 429): slow down.",
        RETRIED,
        min_elapsed=2.0,
        why="retried after exactly the Retry-After delay (<= 10 s cap)",
    ),
    Case(
        "429-retry-after-5",
        "429, Retry-After: 5 (under the cap, past the budget)",
        (Reply(429, envelope("rate_limited", "slow down"), {"retry-after": "5"}),),
        "rate_limited",
        "Wait 5 seconds and try again.",
        1,
        why="the wait would end past the call budget",
    ),
    Case(
        "429-retry-after-30",
        "429, Retry-After: 30 (over the 10 s cap)",
        (Reply(429, envelope("rate_limited", "slow down"), {"retry-after": "30"}),),
        "rate_limited",
        "(HTTP 429): slow down. Wait 30 seconds and try again.",
        1,
        http=True,
        why="Retry-After above the cap: stop and say how long",
    ),
    Case(
        "429-retry-after-date-future",
        "429, Retry-After as an HTTP date 90 s ahead",
        (Reply(429, envelope("rate_limited", "slow down"), retry_after_date=90),),
        "rate_limited",
        "seconds and try again.",
        1,
        pattern=r"Wait (89|90) seconds and try again\.",  # an HTTP date has whole seconds
        why="Retry-After above the cap: stop and say how long",
    ),
    Case(
        "429-retry-after-date-past",
        "429, Retry-After as an HTTP date in the past, every attempt",
        (Reply(429, envelope("rate_limited", "slow down"), retry_after_date=-60),),
        "rate_limited",
        "(HTTP 429): slow down. Wait 1 second and try again.",
        RETRIED,
        why="a past date means retry now",
    ),
    Case(
        "429-retry-after-garbage",
        "429, unparseable Retry-After, every attempt",
        (Reply(429, envelope("rate_limited", "slow down"), {"retry-after": "soon"}),),
        "rate_limited",
        "Wait a minute and try again.",
        RETRIED,
        why="retried with backoff",
    ),
    Case(
        "429-upgrade-url",
        "429 with a top-level upgrade_url (plan cap)",
        (
            Reply(
                429,
                {
                    "error": {"code": "plan_limit", "message": "Monthly limit reached"},
                    "upgrade_url": "https://danube.example/upgrade",
                },
            ),
        ),
        "rate_limited",
        "plan limit has been reached (HTTP 429): Monthly limit reached. Do not retry; the user can "
        "upgrade the plan at https://danube.example/upgrade.",
        1,
        http=True,
        why="a plan cap is never retried",
    ),
    Case(
        "429-upgrade-url-and-retry-after",
        "429 with upgrade_url inside the envelope and Retry-After: 1",
        (
            Reply(
                429,
                envelope("plan_limit", "Monthly limit reached", upgrade_url="https://danube.example/up"),
                {"retry-after": "1"},
            ),
        ),
        "rate_limited",
        "upgrade the plan at https://danube.example/up.",
        1,
        why="a plan cap is never retried",
    ),
    Case(
        "503-retry-after-30",
        "503, Retry-After: 30 (over the cap), every attempt",
        (Reply(503, envelope("unavailable", "maintenance"), {"retry-after": "30"}),),
        "server",
        "30 seconds",
        1,
        why="Retry-After above the cap: stop and say how long",
    ),
    Case(
        "503-retry-after-1",
        "503, Retry-After: 1, every attempt",
        (Reply(503, envelope("unavailable", "maintenance"), {"retry-after": "1"}),),
        "server",
        "(HTTP 503): maintenance",
        RETRIED,
        min_elapsed=2.0,
        why="retried after exactly the Retry-After delay (<= 10 s cap)",
    ),
    # -- The request echoed back: every secret must be scrubbed ---------------------------------
    Case(
        "echo-envelope-401",
        "401 envelope whose message echoes the request body and key",
        (Reply(401, echo_template=envelope("invalid", ECHO)),),
        "authentication",
        "(HTTP 401): could not store",
        1,
        http=True,
    ),
    Case(
        "echo-detail-404",
        "404 whose `detail` echoes the request body and key",
        (Reply(404, echo_template={"detail": ECHO}),),
        "not_found",
        "(HTTP 404): could not store",
        1,
    ),
    Case(
        "echo-detail-list-422",
        "422 validation list whose `msg` and `loc` echo the secrets",
        (
            Reply(
                422,
                echo_template={
                    "detail": [{"loc": ["body", "{key}"], "msg": "bad value {body}", "input": "{body}"}]
                },
            ),
        ),
        "validation",
        "(HTTP 422): [REDACTED]: bad value",
        1,
    ),
    Case(
        "echo-ingestion-hint",
        "400 ingestion-disabled whose `hint` echoes the secrets",
        (
            Reply(
                400,
                echo_template={
                    "detail": {
                        "error": "central_credential_ingestion_disabled",
                        "hint": "not plaintext: {body}",
                    }
                },
            ),
        ),
        "validation",
        "does not accept plaintext credentials (HTTP 400). not plaintext:",
        1,
    ),
    Case(
        "echo-success-false",
        "200 `success: false` whose error echoes the secrets",
        (Reply(200, echo_template={"success": False, **envelope("rejected", ECHO)}),),
        "refused",
        "Danube refused to store the credential: could not store",
        1,
        http=True,
    ),
    Case(
        "echo-notice",
        "200 success whose `notice` and `service_name` echo the secrets",
        (Reply(200, echo_template={**OK_FIELDS, "success": True, "service_name": "{key}", "notice": ECHO}),),
        "ok",
        "Notice from Danube: could not store",
        1,
        http=True,
    ),
    Case(
        "echo-upgrade-url",
        "429 plan cap whose upgrade_url echoes the key",
        (Reply(429, echo_template=envelope("plan_limit", "cap", upgrade_url="https://x.example/?k={key}")),),
        "rate_limited",
        "upgrade the plan at https://x.example/?k=[REDACTED]",
        1,
    ),
    Case(
        "echo-reason-phrase",
        "400, empty body, reason phrase echoes the key and secret",
        (Reply(400, b"", reason_template="bad key {key} value " + SECRET),),
        "validation",
        "(HTTP 400) (bad key [REDACTED] value [REDACTED])",
        1,
    ),
    Case(
        "echo-fragment",
        "403 whose message quotes the first 20 characters of the secret",
        (Reply(403, envelope("forbidden", f"value {SECRET[:20]}... not allowed")),),
        "permission",
        "(HTTP 403): [REDACTED]. The key",
        1,
        why="a fragment of a secret drops the whole upstream message",
    ),
    # -- 2xx answers that are not a success -----------------------------------------------------
    Case(
        "echo-fragment-reason",
        "401, empty body, reason phrase quotes the first 20 characters of the secret",
        (Reply(401, b"", reason="bad value " + SECRET[:20]),),
        "authentication",
        "(HTTP 401) ([REDACTED])",
        1,
        why="a fragment of a secret must not reach stderr either",
    ),
    Case(
        "success-false",
        "200 `success: false` with an error envelope",
        (Reply(200, {"success": False, **envelope("unsupported", "service does not take API keys")}),),
        "refused",
        "Danube refused to store the credential: service does not take API keys. Nothing was stored",
        1,
    ),
    Case(
        "success-false-bare",
        "200 `{success: false}` and nothing else",
        (Reply(200, {"success": False}),),
        "refused",
        "Danube refused to store the credential. Nothing was stored",
        1,
    ),
    Case(
        "missing-fields",
        "200 `{success: true}` without the other fields",
        (Reply(200, {"success": True}),),
        "malformed_response",
        "lacked a valid 'service_id' field. The credential may or may not have been stored",
        1,
    ),
    Case(
        "wrong-type-success",
        '200 with `success: "true"` (a string)',
        (Reply(200, {**OK_FIELDS, "success": "true"}),),
        "malformed_response",
        "had no valid 'success' field",
        1,
    ),
    Case(
        "wrong-type-field",
        "200 with `service_name: 42`",
        (Reply(200, {**OK_FIELDS, "success": True, "service_name": 42}),),
        "malformed_response",
        "lacked a valid 'service_name' field",
        1,
    ),
    Case(
        "json-array",
        "200 with a JSON array",
        (Reply(200, [OK_FIELDS]),),
        "malformed_response",
        "was not a JSON object",
        1,
    ),
    Case(
        "truncated-json",
        "200 with truncated JSON (complete HTTP message)",
        (Reply(200, b'{"success": true, "service_id": "svc_fault_001", "service_na'),),
        "malformed_response",
        "(HTTP 200) was not a JSON object. The credential may or may not have been stored",
        1,
        http=True,
    ),
    Case(
        "deep-json-200",
        "200 with 2 KB of JSON nested 1000 deep",
        (Reply(200, b"[" * 1000 + b"]" * 1000),),
        "malformed_response",
        "(HTTP 200) was not a JSON object",
        1,
    ),
    Case(
        "deep-json-503",
        "503 whose body is JSON nested 1000 deep, every attempt",
        (Reply(503, b"[" * 1000 + b"]" * 1000, reason="Service Unavailable"),),
        "server",
        "(HTTP 503) (Service Unavailable)",
        RETRIED,
        why="retried: 502/503/504",
    ),
    Case(
        "huge-200",
        "200 with a 10 MB body",
        (Reply(200, BIG_200),),
        "malformed_response",
        "(HTTP 200) was larger than 256 KiB and was not read",
        1,
        http=True,
        why="the read stops at 256 KiB",
    ),
    Case(
        "huge-200-no-length",
        "200 with a 10 MB body, no Content-Length (ends at close)",
        (Reply(200, BIG_200, no_length=True),),
        "malformed_response",
        "larger than 256 KiB",
        1,
    ),
    Case(
        "huge-500-html",
        "500 with a 10 MB HTML body",
        (Reply(500, BIG_HTML, {"content-type": "text/html"}, reason="Internal Server Error"),),
        "server",
        "(HTTP 500) (Internal Server Error)",
        1,
    ),
    Case(
        "created-201",
        "201 with a normal success body",
        (Reply(201, {**OK_FIELDS, "success": True}),),
        "ok",
        "Stored the API key for Fault Service (service_id svc_fault_001)",
        1,
    ),
    # -- Timing ---------------------------------------------------------------------------------
    Case(
        "delay-short",
        "0.3 s delay, then a normal answer",
        (Reply(delay=0.3),),
        "ok",
        "Stored the API key",
        1,
    ),
    Case(
        "delay-past-timeout",
        "1.5 s delay (over the 1 s attempt timeout), every attempt",
        (Reply(delay=1.5),),
        "timeout",
        "Danube did not answer in time (limit 1 s per attempt, 2.5 s in all)",
        BUDGET_BOUND,
        why="retried until the budget runs out (see above)",
    ),
    Case(
        "drip-within-timeout",
        "normal answer dripped 1 byte / 3 ms (~0.4 s)",
        (Reply(drip=0.003),),
        "ok",
        "Stored the API key",
        1,
    ),
    Case(
        "drip-past-timeout",
        "normal answer dripped 1 byte / 50 ms (~6 s), every attempt",
        (Reply(drip=0.05),),
        "timeout",
        "Danube did not answer in time",
        BUDGET_BOUND,
        why="the 1 s limit covers the whole body; retried until the budget runs out",
    ),
    Case(
        "hang",
        "accepts the request and never answers, every attempt",
        (Reply(hang=True),),
        "timeout",
        "Danube did not answer in time (limit 1 s per attempt, 2.5 s in all). Try again later",
        BUDGET_BOUND,
        http=True,
        why="retried until the budget runs out (see above)",
    ),
    Case(
        "hang-then-ok",
        "never answers once, then a normal answer",
        (Reply(hang=True), Reply()),
        "ok",
        "Stored the API key",
        2,
        why="the retry succeeds",
    ),
    # -- Connections that end early -------------------------------------------------------------
    Case(
        "close-before",
        "closes the connection before answering, every attempt",
        (Reply(close_before=True),),
        "connection",
        "the connection closed before a complete answer arrived",
        RETRIED,
        http=True,
        why="retried: connection failure",
    ),
    Case(
        "reset-before",
        "resets the connection (TCP RST) before answering, every attempt",
        (Reply(reset_before=True),),
        "connection",
        "Could not reach Danube at http://127.0.0.1:",
        RETRIED,
        why="retried: connection failure",
    ),
    Case(
        "close-mid-body-200",
        "200, closes halfway through the body, every attempt",
        (Reply(close_mid_body=True),),
        "connection",
        "the connection closed before a complete answer arrived",
        RETRIED,
        http=True,
        why="retried: a store is idempotent, so a lost answer is safe to retry",
    ),
    Case(
        "close-before-then-ok",
        "closes the connection once, then a normal answer",
        (Reply(close_before=True), Reply()),
        "ok",
        "Stored the API key",
        2,
        why="the retry succeeds",
    ),
)


HTTP_CASES = tuple(c for c in CASES if c.http)
# The 2026-07-28 era changes how a call reaches the tool (no session, per-request _meta), not the
# Danube client's retry timing: the retried HTTP rows are left out there, except the timeout row.
ERA_2026_CASES = tuple(c for c in HTTP_CASES if c.attempts == 1 or c.outcome == "timeout")


# --------------------------------------------------------------------------------------------
# The doc table


def render_doc(cases: tuple[Case, ...] = CASES) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "# Fault matrix",
        "",
        "How `danube-mcp` answers each way Danube, or the network in front of it, can misbehave. Every "
        "row is a test case in `tests/test_fault_matrix.py`, run through a real server process over "
        "stdio, and also over streamable HTTP where the HTTP column says so. Every row runs in an "
        "`initialize`-era session; the HTTP rows with one attempt, and the timeout row, also run as "
        "2026-07-28 requests (per-request `_meta`, no session) over stdio and over streamable HTTP. "
        "This file is generated "
        "from those rows (`PYTHONPATH=src python tests/test_fault_matrix.py > docs/fault-matrix.md`) "
        "and a test fails if the two differ.",
        "",
        f"Settings: `DANUBE_TIMEOUT={TIMEOUT:g}`, `DANUBE_MCP_CALL_BUDGET={BUDGET:g}`, "
        f"`DANUBE_MAX_RETRIES={MAX_RETRIES}`, `DANUBE_MCP_LOG_LEVEL=DEBUG`.",
        "",
        "For every row the test also checks that the call ends within the call budget (plus "
        f"{SLACK:g} s slack for process and protocol overhead), that neither the API key nor the "
        f"credential value (nor any {FRAGMENT}-character piece of either) appears in the tool result, the "
        "server's stdout or HTTP response bodies, or its stderr at DEBUG level, and that the next "
        "normal call succeeds.",
        "",
        "Retry policy: 502/503/504, 429 without `upgrade_url`, connection failures and timeouts are "
        f"retried, up to {RETRIED} attempts here, after a jittered backoff (0.25-0.5 s, then "
        "0.5-1 s) or after the Retry-After delay when that is at most 10 s. A retry whose wait would "
        "end after the call budget is not made. Everything else gets one attempt. A timeout on "
        f"every attempt makes exactly {BUDGET_BOUND} attempts with these settings: attempt 1 times "
        "out at 1 s, attempt 2 ends by 2.5 s, and the next backoff would end past the budget.",
        "",
        "Result: `ok` is a normal tool result; otherwise `isError: true` and the error class the "
        "server logs. A row marked **known bug** would state the correct behaviour and be expected "
        "to fail (strict xfail) until the server is fixed; there are none at present.",
        "",
        "| Fault | Result | Attempts | Message contains | HTTP | Why |",
        "|---|---|---|---|---|---|",
    ]
    for c in cases:
        result = "ok" if c.outcome == "ok" else f"error: {c.outcome}"
        gist = f"`{c.pattern}` (regex)" if c.pattern else f"{c.gist}"
        why = c.why
        if c.xfail:
            why = f"**known bug**: {c.xfail}" + (f". Should be: {c.why}" if c.why else "")
        lines.append(
            f"| `{c.id}`: {cell(c.fault)} | {result} | {c.attempts} | {cell(gist)} | "
            f"{'yes' if c.http else ''} | {cell(why)} |"
        )
    return "\n".join(lines) + "\n"


def test_doc_table_matches_the_rows() -> None:
    assert DOC.read_text(encoding="utf-8") == render_doc(), (
        "docs/fault-matrix.md is out of date: regenerate it with "
        "`PYTHONPATH=src python tests/test_fault_matrix.py > docs/fault-matrix.md`"
    )


def test_the_matrix_has_one_home() -> None:
    """docs/fault-matrix.md is the only copy (a second one would drift), and a newcomer finds it
    from the README's Reliability section and from docs/reliability.md."""
    rows = [line for line in render_doc().splitlines() if line.startswith("| `")]
    assert len(rows) == len(CASES)
    copies = [
        p.relative_to(REPO).as_posix()
        for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
        if p != DOC and any(row in p.read_text(encoding="utf-8") for row in rows)
    ]
    assert not copies, f"only docs/fault-matrix.md may carry the fault table; also found in {copies}"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    reliability = readme[readme.index("\n## Reliability\n") :]
    reliability = reliability[: reliability.find("\n## ", 1)]
    assert "(docs/fault-matrix.md)" in reliability, "README's Reliability section must link the matrix"
    assert "(fault-matrix.md)" in (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")


def test_rows_are_consistent() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    for c in CASES:
        assert c.replies and 1 <= c.attempts <= RETRIED, c.id
        assert c.outcome == "ok" or not c.why.startswith("the retry succeeds"), c.id


# --------------------------------------------------------------------------------------------
# Endpoints: a server process plus an SDK session that records every byte the server sent


@dataclass(frozen=True)
class Mark:
    stderr: int
    wire: list[int]
    stdout: int


@dataclass
class Endpoint:
    name: str
    portal: BlockingPortal
    client: Client
    err: Captured
    wire: list[bytearray]  # what the server sent: stdout lines, or HTTP response heads + bodies
    stdout: Callable[[], bytes] = field(default=lambda: b"")

    def call(self, args: dict[str, Any]) -> tuple[types.CallToolResult, float, str]:
        """The tool call's result, its duration, and what the server logged meanwhile."""
        mark = len(self.err.text())
        start = time.monotonic()
        result = self.portal.call(self.client.call_tool, TOOL, args)
        elapsed = time.monotonic() - start
        return result, elapsed, self.err.text()[mark:]

    def mark(self) -> Mark:
        """Where the output stands now; taken while the server is idle, so between whole messages."""
        return Mark(len(self.err.text()), [len(b) for b in self.wire], len(self.stdout()))

    def output_since(self, mark: Mark) -> str:
        """Everything the server wrote after ``mark``: stdout or HTTP response bytes, and stderr.

        Per case rather than cumulative, so that one known leak (an xfail row) does not fail every
        row after it."""
        wire = list(self.wire)
        parts = [bytes(b[mark.wire[i] if i < len(mark.wire) else 0 :]) for i, b in enumerate(wire)]
        raw = b"\n".join([*parts, self.stdout()[mark.stdout :]])
        return raw.decode("utf-8", "replace") + "\n" + self.err.text()[mark.stderr :]


def server_env(up: FakeUpstream) -> dict[str, str]:
    return child_env(
        DANUBE_API_KEY=API_KEY,
        DANUBE_API_URL=up.url,
        DANUBE_TIMEOUT=f"{TIMEOUT:g}",
        DANUBE_MCP_CALL_BUDGET=f"{BUDGET:g}",
        DANUBE_MAX_RETRIES=str(MAX_RETRIES),
        DANUBE_MCP_LOG_LEVEL="DEBUG",
    )


@asynccontextmanager
async def teed(
    transport: Transport, wire: list[bytearray]
) -> AsyncIterator[tuple[MemoryObjectReceiveStream[SessionMessage | Exception], Any]]:
    """``transport`` with every message the server sends also kept, serialised, in ``wire``."""
    async with transport as (read, write):
        tee_send, tee_recv = anyio.create_memory_object_stream[SessionMessage | Exception](0)

        async def tee() -> None:
            async with tee_send:
                async for item in read:
                    if isinstance(item, SessionMessage):
                        wire.append(bytearray(item.message.model_dump_json(by_alias=True).encode()))
                    else:
                        wire.append(bytearray(repr(item).encode()))
                    await tee_send.send(item)

        async with anyio.create_task_group() as tg:
            tg.start_soon(tee)
            try:
                yield tee_recv, write
            finally:
                tg.cancel_scope.cancel()


@asynccontextmanager
async def recorded_stdio(
    env: dict[str, str], mode: str
) -> AsyncIterator[tuple[Client, Captured, list[bytearray]]]:
    """Like ``procs.mcp_stdio``, but every message the server writes to stdout is kept."""
    err = Captured()
    wire: list[bytearray] = []
    params = StdioServerParameters(command=sys.executable, args=["-m", "danube_mcp"], env=env, cwd=str(REPO))
    transport = teed(stdio_client(params, errlog=cast(TextIO, err.file)), wire)
    async with Client(transport, mode=mode) as client:
        yield client, err, wire


class _TeeStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, sink: bytearray) -> None:
        self.inner = inner
        self.sink = sink

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self.sink.extend(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class RecordingTransport(httpx2.AsyncBaseTransport):
    """Keeps the status line, headers and body of every HTTP response, as they arrive."""

    def __init__(self, wire: list[bytearray]) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.wire = wire

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.inner.handle_async_request(request)
        sink = bytearray(f"{response.status_code} {dict(response.headers)}\n".encode())
        self.wire.append(sink)
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_TeeStream(response.stream, sink),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


@asynccontextmanager
async def recorded_streamable(url: str, wire: list[bytearray], mode: str) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(transport=RecordingTransport(wire), timeout=30) as hc:
        transport = streamable_http_client(f"{url}/mcp", http_client=hc)
        async with Client(transport, mode=mode) as client:
            yield client


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal("asyncio") as p:
        yield p


def _stdio_endpoint(portal: BlockingPortal, fake: FakeUpstream, mode: str) -> Iterator[Endpoint]:
    # One process per era: an initialize request fixes a stdio process to the initialize era.
    with portal.wrap_async_context_manager(recorded_stdio(server_env(fake), mode)) as (client, err, wire):
        assert client.protocol_version == (MODERN if mode == MODERN else LATEST_HANDSHAKE_VERSION)
        yield Endpoint(f"stdio ({mode})", portal, client, err, wire)


@pytest.fixture(scope="module")
def stdio(portal: BlockingPortal, fake: FakeUpstream) -> Iterator[Endpoint]:
    yield from _stdio_endpoint(portal, fake, "legacy")


@pytest.fixture(scope="module")
def stdio_2026(portal: BlockingPortal, fake: FakeUpstream) -> Iterator[Endpoint]:
    yield from _stdio_endpoint(portal, fake, MODERN)


def _nonblocking_reader(srv: HttpServer) -> Callable[[], bytes]:
    assert srv.proc.stdout is not None
    fd = srv.proc.stdout.fileno()
    os.set_blocking(fd, False)
    seen = bytearray()

    def read() -> bytes:
        try:
            while chunk := os.read(fd, 65536):
                seen.extend(chunk)
        except BlockingIOError:
            pass
        return bytes(seen)

    return read


@pytest.fixture(scope="module")
def http_server(fake: FakeUpstream) -> Iterator[tuple[HttpServer, Callable[[], bytes]]]:
    """One HTTP process serves both eras: an initialize-era session and 2026 stateless requests."""
    srv = HttpServer(server_env(fake), ("--transport", "streamable-http"))
    try:
        yield srv, _nonblocking_reader(srv)
    finally:
        srv.stop()
        if srv.proc.stdout:
            srv.proc.stdout.close()


def _http_endpoint(
    portal: BlockingPortal, server: tuple[HttpServer, Callable[[], bytes]], mode: str
) -> Iterator[Endpoint]:
    srv, stdout = server
    wire: list[bytearray] = []
    with portal.wrap_async_context_manager(recorded_streamable(srv.url, wire, mode)) as client:
        assert client.protocol_version == (MODERN if mode == MODERN else LATEST_HANDSHAKE_VERSION)
        yield Endpoint(f"http ({mode})", portal, client, srv.err, wire, stdout)


@pytest.fixture(scope="module")
def http(portal: BlockingPortal, http_server: tuple[HttpServer, Callable[[], bytes]]) -> Iterator[Endpoint]:
    yield from _http_endpoint(portal, http_server, "legacy")


@pytest.fixture(scope="module")
def http_2026(
    portal: BlockingPortal, http_server: tuple[HttpServer, Callable[[], bytes]]
) -> Iterator[Endpoint]:
    yield from _http_endpoint(portal, http_server, MODERN)


# --------------------------------------------------------------------------------------------
# The matrix


def _ok(_: Recorded) -> Reply:
    return Reply()


def assert_no_canary(text: str, where: str) -> None:
    for canary in CANARIES:
        assert canary not in text, f"{where} contains a canary"
        for i in range(len(canary) - FRAGMENT + 1):
            piece = canary[i : i + FRAGMENT]
            assert piece not in text, f"{where} contains {FRAGMENT} characters of a canary: {piece!r}"


def run_case(ep: Endpoint, up: FakeUpstream, case: Case) -> None:
    up.reset()
    up.script(*case.replies[:-1])
    last = case.replies[-1]
    up.set_default(lambda _req: last)
    mark = ep.mark()
    try:
        result, elapsed, log = ep.call(ARGS)
        attempts = len(up.requests)
    finally:
        up.reset()
        up.set_default(_ok)
    assert result.content and isinstance(result.content[0], types.TextContent)
    text = result.content[0].text

    # The result class and a useful message.
    assert result.is_error is (case.outcome != "ok"), text
    assert case.gist in text, text
    if case.pattern:
        assert re.search(case.pattern, text), text
    if case.outcome == "ok":
        assert result.structured_content is not None and result.structured_content["success"] is True
        assert "store_credential: stored api_key" in log
    else:
        assert result.structured_content is None
        assert f"store_credential failed: {case.outcome} after {attempts} attempt(s)" in log, log

    # Exactly as many upstream attempts as the policy allows, all within the budget.
    assert attempts == case.attempts, f"{attempts} attempts: {text}"
    assert elapsed < BUDGET + SLACK, f"{elapsed:.2f} s"
    assert elapsed >= case.min_elapsed, f"{elapsed:.2f} s: a wait was not honoured"

    # No secret anywhere: the result, stdout / HTTP bodies, stderr at DEBUG.
    assert_no_canary(result.model_dump_json(), "the tool result")
    assert_no_canary(ep.output_since(mark), f"{ep.name} output")

    # And the server is still healthy: the next normal call succeeds on the first attempt.
    after, after_elapsed, _ = ep.call(ARGS)
    assert after.is_error is False, after
    assert len(up.requests) == 1
    assert after_elapsed < BUDGET
    assert_no_canary(after.model_dump_json() + ep.output_since(mark), f"{ep.name} output")


def _params(cases: tuple[Case, ...]) -> list[Any]:
    return [
        pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
        for c in cases
    ]


@pytest.mark.parametrize("case", _params(CASES))
def test_fault_over_stdio(stdio: Endpoint, fake: FakeUpstream, case: Case) -> None:
    run_case(stdio, fake, case)


@pytest.mark.parametrize("case", _params(HTTP_CASES))
def test_fault_over_streamable_http(http: Endpoint, fake: FakeUpstream, case: Case) -> None:
    run_case(http, fake, case)


@pytest.mark.parametrize("case", _params(ERA_2026_CASES))
@pytest.mark.parametrize("endpoint", ["stdio_2026", "http_2026"])
def test_fault_in_the_2026_era(
    request: pytest.FixtureRequest, fake: FakeUpstream, endpoint: str, case: Case
) -> None:
    """The HTTP rows (but the retried ones) again, as 2026-07-28 requests (per-request ``_meta``,
    no session): the same answers, attempts, budget and silence about secrets in either era."""
    ep: Endpoint = request.getfixturevalue(endpoint)
    mark = ep.mark()
    run_case(ep, fake, case)
    # And it was the 2026 era: results carry resultType and the serverInfo stamp, with no session.
    out = ep.output_since(mark)
    assert out.count('"resultType":"complete"') >= 2, out[-2000:]
    assert out.count('"io.modelcontextprotocol/serverInfo"') >= 2, out[-2000:]
    assert "mcp-session-id" not in out.lower()


if __name__ == "__main__":
    sys.stdout.write(render_doc())
