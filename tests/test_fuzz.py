"""Property-based tests: arbitrary arguments through a real MCP client session.

Every ``tools/call`` either stores the credential in the sandbox or comes back as a clean tool error
("Invalid arguments: ..." from the server's own validation, or a Danube rejection); nothing else
(no "Internal error", no protocol error), the server keeps serving, and the secret-bearing field
(and a canary hidden in any other field or key) is never echoed.

Two sessions, each kept open across all examples of a test (hypothesis drives a sync function; the
session lives in an anyio blocking portal):

* in process: ``build_server`` over a ``DanubeClient`` whose transport is the sandbox ASGI app;
* a real ``danube-mcp --sandbox`` child over stdio (fewer examples: to show it never crashes).
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import ClientSession, types
from mcp.shared.memory import create_connected_server_and_client_session

from danube_mcp.danube.client import DanubeClient
from danube_mcp.tool.schema import MAX_CREDENTIAL_VALUE, ArgumentError, StoreRequest, parse_arguments
from danube_mcp.sandbox import BUILTIN_SERVICES, DEMO_API_KEY, create_app, open_store
from danube_mcp.sandbox.catalog import build_catalog, lookup
from danube_mcp.sandbox.constants import MAX_BODY_BYTES
from danube_mcp.sandbox.store import classify_value
from danube_mcp.tool.handler import SANDBOX_PREFIX, TOOL_NAME, build_server
from procs import child_env, mcp_stdio

CANARY = "sk-CANARY-fuzz-8c7d6e5f4a3b2910"
MISSING = object()  # the argument is left out

# Budgets: the whole file runs in well under a minute.
IN_PROCESS_EXAMPLES = 3000
EXTRA_ARGUMENT_EXAMPLES = 500
TOOL_NAME_EXAMPLES = 300
STDIO_EXAMPLES = 50

CALL_TIMEOUT = timedelta(seconds=20)
EXAMPLES_RUN: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()
PLAIN_NAME = re.compile(r"^[A-Za-z][A-Za-z_-]{0,31}$")  # names the server may quote back

CATALOG = build_catalog()
SERVICE_IDS = [s.id for s in BUILTIN_SERVICES]

FUZZ_SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)


# --------------------------------------------------------------------------------------------
# Strategies

ODD_CHARS = [
    "\x00",
    "\x01",
    "\x1b",
    "\x7f",
    "\x85",
    "\x9f",
    "\t",
    "\n",
    "\r",
    "\u00a0",
    "\u200b",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\ufffd",
    "\uffff",
    "\ud800",
    "\udbff",
    "\udc00",
    "\udfff",
    "\U0001d11e",
    "\U0010ffff",
    '"',
    "\\",
    "{",
]
FRAGMENTS = ["%s", "%(x)s", "{0}", "${DANUBE_API_KEY}", "\r\n", "</script>", "' OR 1=1 --", "null"]


def odd_alphabet(*, surrogates: bool) -> st.SearchStrategy[str]:
    chars = st.one_of(
        st.characters(codec="utf-8"),  # any code point but surrogates
        st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Zs", "Co", "Cn"]),
        st.sampled_from([c for c in ODD_CHARS if surrogates or not 0xD800 <= ord(c[0]) <= 0xDFFF]),
    )
    if surrogates:
        chars = st.one_of(chars, st.characters(categories=["Cs"]))
    return chars


def long_strings(alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Up to ~100k characters: one piece repeated, lengths clustered around the real limits."""
    length = st.one_of(
        st.integers(1, 100_000),
        st.integers(MAX_CREDENTIAL_VALUE - 2, MAX_CREDENTIAL_VALUE + 2),
        st.integers(MAX_BODY_BYTES // 4 - 300, MAX_BODY_BYTES // 4 + 10),
        st.integers(255, 258),
    )
    piece = st.text(alphabet=alphabet, min_size=1, max_size=4) | st.just(CANARY)
    return st.builds(lambda p, n: (p * (n // len(p) + 1))[:n], piece, length)


def fragments(alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Short odd strings: characters from ``alphabet`` mixed with format/injection fragments."""
    pieces = st.text(alphabet=alphabet, max_size=12) | st.sampled_from(FRAGMENTS)
    return st.lists(pieces, max_size=4).map("".join)


@dataclass(frozen=True)
class Flavour:
    """What the transport can carry: the in-memory session passes Python objects as they are,
    JSON on stdio cannot carry lone surrogates (the SDK client refuses them) or NaN."""

    surrogates: bool
    nan: bool


IN_MEMORY = Flavour(surrogates=True, nan=True)
OVER_STDIO = Flavour(surrogates=False, nan=False)


def strategies(f: Flavour) -> dict[str, st.SearchStrategy[Any]]:
    alphabet = odd_alphabet(surrogates=f.surrogates)
    odd = fragments(alphabet)
    plain_odd = fragments(odd_alphabet(surrogates=False))
    with_canary = st.builds(lambda a, b: a + CANARY + b, odd, odd)
    strings = st.one_of(odd, with_canary, long_strings(alphabet), st.just(""), st.just(CANARY))
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(2**200), max_value=2**200),
        st.floats(allow_nan=f.nan, allow_infinity=f.nan),
        strings,
    )
    json_values = st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            # Nested keys without lone surrogates: the SDK client's model_dump(mode="json") cannot
            # serialise those (top-level argument names and all string values can carry them).
            st.dictionaries(st.one_of(plain_odd, st.just(CANARY)), children, max_size=4),
        ),
        max_leaves=12,
    )
    known_ids = st.sampled_from(SERVICE_IDS)
    service_ids = st.one_of(
        known_ids,
        known_ids.map(str.upper),
        st.builds(lambda pad, sid, end: pad + sid + end, st.sampled_from(["", " ", "\t"]), known_ids, odd),
        odd,
        with_canary,
        long_strings(alphabet),
        json_values,
        st.just(MISSING),
    )
    types_ = st.one_of(
        st.sampled_from(["bearer", "api_key"]),
        st.sampled_from(["oauth2", "OAuth", "BEARER", " bearer", "api-key", "", CANARY]),
        odd,
        json_values,
        st.just(MISSING),
    )
    values = st.one_of(
        with_canary,
        with_canary.map(lambda v: v.strip() or CANARY),
        st.builds(lambda a, b: a + CANARY + b, st.text(max_size=20), st.text(max_size=20)).map(str.strip),
        st.sampled_from(
            [f"vault://kv/app#{CANARY}", f"env://{CANARY.replace('-', '_')}", f"Bearer {CANARY}"]
        ),
        long_strings(alphabet),
        json_values,
        st.just(MISSING),
    )
    extra_keys = st.one_of(odd, st.sampled_from([CANARY, "extra", "credential_Value", "serviceId", "x" * 40]))
    extras = st.one_of(st.just({}), st.dictionaries(extra_keys, json_values, min_size=1, max_size=3))
    # Close to a good call: a known service and type, an odd but string value, no extras. Keeps
    # the share of calls that reach (and get through) the sandbox from being vanishingly small.
    near = {
        "service_id": st.one_of(known_ids, known_ids.map(lambda v: f" {v.upper()} ")),
        "credential_type": st.sampled_from(["bearer", "api_key"]),
        "credential_value": st.one_of(
            with_canary, with_canary.map(lambda v: v.strip() or CANARY), long_strings(alphabet)
        ),
        "extra": st.just({}),
    }
    return {
        "service_id": service_ids,
        "credential_type": types_,
        "credential_value": values,
        "extra": extras,
        **{f"near_{k}": v for k, v in near.items()},
    }


def arguments(f: Flavour) -> st.SearchStrategy[dict[str, Any]]:
    s = strategies(f)

    def build(sid: Any, ctype: Any, value: Any, extra: dict[str, Any]) -> dict[str, Any]:
        args = {
            k: v for k, v in extra.items() if k not in ("service_id", "credential_type", "credential_value")
        }
        for name, v in (("service_id", sid), ("credential_type", ctype), ("credential_value", value)):
            if v is not MISSING:
                args[name] = v
        return args

    names = ("service_id", "credential_type", "credential_value", "extra")
    anything = st.builds(build, *(s[n] for n in names))
    near_valid = st.builds(build, *(s[f"near_{n}"] for n in names))
    return st.one_of(anything, near_valid)


# --------------------------------------------------------------------------------------------
# The oracle: what the answer must be, from the server's own validation and the sandbox contract


def expected_outcome(args: dict[str, Any]) -> tuple[str, StoreRequest | None]:
    """'invalid', 'stored' or 'rejected' (by the sandbox), and the parsed request."""
    try:
        req = parse_arguments(args)
    except ArgumentError:
        return "invalid", None
    service = lookup(CATALOG, req.service_id)
    body = json.dumps(req.to_json(), ensure_ascii=False, separators=(",", ":")).encode()
    if service is None or not service.requires_credentials or len(body) > MAX_BODY_BYTES:
        return "rejected", req
    return "stored", req


def scrub_hits(value: str, field: str, sent: tuple[str, str]) -> bool:
    """Whether the client's scrub of a successful answer rewrites ``field`` because of ``value``.

    A field equal to what the caller sent (service id, type) is kept. Otherwise only credentials of
    8 characters or more count: the field holds the value or, for values of 16 characters or more,
    any 8-character piece of it (the upstream may have echoed the secret; it cannot be told apart)."""
    if field in sent or len(value) < 8:
        return False
    if value in field:
        return True
    return len(value) >= 16 and any(value[i : i + 8] in field for i in range(len(value) - 7))


def check_result(args: dict[str, Any], result: types.CallToolResult, prefix: str = "") -> str:
    dumped = json.dumps(result.model_dump(mode="json"), ensure_ascii=False)
    assert CANARY not in dumped
    value = args.get("credential_value")
    if isinstance(value, str) and len(value) >= 24 and value.strip():
        assert value not in dumped
    assert len(result.content) == 1 and isinstance(result.content[0], types.TextContent)
    text = result.content[0].text
    assert text.startswith(prefix)
    text = text[len(prefix) :]
    assert "Internal error" not in text and "Could not reach" not in text
    outcome, req = expected_outcome(args)
    if outcome == "stored":
        assert req is not None
        assert result.is_error is False, text
        sc = result.structured_content
        assert sc is not None and sc["success"] is True
        service = lookup(CATALOG, req.service_id)
        assert service is not None
        assert sc["stored_as"] == classify_value(req.credential_value)
        assert text.startswith("Stored the ")
        expected = {
            "service_id": service.id,
            "service_name": service.name,
            "credential_type": req.credential_type,
        }
        for name, want in expected.items():
            if scrub_hits(req.credential_value, want, (req.service_id, req.credential_type)):
                # Indistinguishable from an upstream echoing the secret: redacted by design.
                assert "[REDACTED]" in sc[name]
                return "stored (mangled)"
            assert sc[name] == want
    else:
        assert result.is_error is True
        assert result.structured_content is None
        if outcome == "invalid":
            assert text.startswith("Invalid arguments: "), text
        else:
            assert text.startswith("Danube "), text
    return outcome


# --------------------------------------------------------------------------------------------
# In-process session, kept open across examples


@dataclass
class InProcess:
    portal: BlockingPortal
    session: ClientSession
    stats: dict[str, int]  # the sandbox's counters: store_requests, stored

    def call(self, name: str, args: dict[str, Any]) -> types.CallToolResult:
        return call_tool(self.portal, self.session, name, args)


def call_tool(
    portal: BlockingPortal, session: ClientSession, name: str, args: dict[str, Any]
) -> types.CallToolResult:
    """One call, bounded: a lost answer fails the example instead of hanging the run."""
    result: types.CallToolResult = portal.call(
        functools.partial(session.call_tool, name, args, read_timeout_seconds=CALL_TIMEOUT)
    )
    return result


@asynccontextmanager
async def in_process_session() -> AsyncIterator[tuple[ClientSession, dict[str, int]]]:
    store = open_store(":memory:")
    app = create_app(store, api_keys=[DEMO_API_KEY])
    client = DanubeClient(
        base_url="http://sandbox.invalid",
        api_key=DEMO_API_KEY,
        max_retries=0,
        transport=httpx2.ASGITransport(app=app),
    )
    server = build_server(client)
    try:
        async with client, create_connected_server_and_client_session(server) as session:
            await session.list_tools()  # the client then checks structured results against the schema
            yield session, app.state.stats
    finally:
        await store.aclose()


@pytest.fixture(scope="module")
def in_process() -> Iterator[InProcess]:
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(in_process_session()) as (session, stats),
    ):
        yield InProcess(portal, session, stats)


@pytest.fixture(scope="module", autouse=True)
def report_examples(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(EXAMPLES_RUN.items()))
    results = ", ".join(f"{k}: {v}" for k, v in sorted(OUTCOMES.items()))
    line = (
        f"test_fuzz: {sum(EXAMPLES_RUN.values())} hypothesis examples run ({summary}; tool calls {results})"
    )
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:  # pragma: no cover
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(line)


def test_arbitrary_arguments_succeed_or_fail_cleanly(in_process: InProcess) -> None:
    outcomes: Counter[str] = Counter()

    @settings(FUZZ_SETTINGS, max_examples=IN_PROCESS_EXAMPLES)
    @given(args=arguments(IN_MEMORY))
    def prop(args: dict[str, Any]) -> None:
        EXAMPLES_RUN["in-process arguments"] += 1
        before = dict(in_process.stats)
        result = in_process.call(TOOL_NAME, args)
        outcome = check_result(args, result)
        outcomes[outcome.split()[0]] += 1
        OUTCOMES[outcome] += 1
        # Only arguments that pass validation reach Danube; a bad call never costs a request.
        sent = in_process.stats["store_requests"] - before["store_requests"]
        assert sent == (0 if outcome == "invalid" else 1)
        assert in_process.stats["stored"] - before["stored"] == (1 if outcome.startswith("stored") else 0)

    prop()
    # The strategies reach every branch, so the property is not vacuous.
    assert all(outcomes[k] > 0 for k in ("stored", "invalid", "rejected")), outcomes


def test_arbitrary_extra_arguments_are_refused_without_echo(in_process: InProcess) -> None:
    s = strategies(IN_MEMORY)
    good = {"service_id": "svc_openai_001", "credential_type": "bearer", "credential_value": CANARY}

    @settings(FUZZ_SETTINGS, max_examples=EXTRA_ARGUMENT_EXAMPLES)
    @given(extra=s["extra"].filter(lambda d: any(k not in good for k in d)))
    def prop(extra: dict[str, Any]) -> None:
        EXAMPLES_RUN["in-process extra arguments"] += 1
        before = in_process.stats["store_requests"]
        args = {**good, **{k: v for k, v in extra.items() if k not in good}}
        result = in_process.call(TOOL_NAME, args)
        assert check_result(args, result) == "invalid"
        text = result.content[0].text  # type: ignore[union-attr]
        assert "unexpected argument(s): " in text
        for key in extra:
            if key not in good and not PLAIN_NAME.match(key):
                assert repr(key) not in text  # only plain word-like names are quoted back
        assert in_process.stats["store_requests"] == before

    prop()


def test_arbitrary_tool_names_get_a_clean_error(in_process: InProcess) -> None:
    alphabet = odd_alphabet(surrogates=True)
    names = st.one_of(
        st.text(alphabet=alphabet, max_size=30),
        st.builds(lambda a, b: a + CANARY + b, st.text(alphabet=alphabet, max_size=5), st.text(max_size=5)),
        long_strings(alphabet),
    ).filter(lambda n: n != TOOL_NAME)

    @settings(FUZZ_SETTINGS, max_examples=TOOL_NAME_EXAMPLES)
    @given(name=names)
    def prop(name: str) -> None:
        EXAMPLES_RUN["in-process tool names"] += 1
        result = in_process.call(name, {"credential_value": CANARY})
        assert result.is_error is True
        assert result.content[0].text == "Unknown tool. This server has one tool: store_credential."  # type: ignore[union-attr]
        assert CANARY not in result.model_dump_json()

    prop()
    # Still serving, and still storing.
    ok = in_process.call(
        TOOL_NAME, {"service_id": "svc_github_001", "credential_type": "api_key", "credential_value": CANARY}
    )
    assert ok.is_error is False


@pytest.mark.parametrize("value", ["s", "0", "OpenAI", "bearer", "svc_openai_001-personal-token"])
def test_value_overlapping_a_returned_field_does_not_mangle_it(in_process: InProcess, value: str) -> None:
    args = {"service_id": "svc_openai_001", "credential_type": "bearer", "credential_value": value}
    result = in_process.call(TOOL_NAME, args)
    assert result.is_error is False
    assert result.structured_content == {
        "success": True,
        "service_id": "svc_openai_001",
        "service_name": "OpenAI",
        "credential_type": "bearer",
        "stored_as": "value",
    }


# --------------------------------------------------------------------------------------------
# A real process over stdio


def test_real_stdio_process_never_crashes(tmp_path: Path) -> None:
    env = child_env(DANUBE_MCP_LOG_LEVEL="DEBUG")
    args = ("--sandbox", "--sandbox-db", str(tmp_path / "sb.db"))
    outcomes: Counter[str] = Counter()
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(mcp_stdio(env, args)) as (session, err),
    ):

        @settings(FUZZ_SETTINGS, max_examples=STDIO_EXAMPLES)
        @given(args=arguments(OVER_STDIO))
        def prop(args: dict[str, Any]) -> None:
            EXAMPLES_RUN["stdio arguments"] += 1
            result = call_tool(portal, session, TOOL_NAME, args)
            # What the server sees is what survives the JSON round trip.
            wire = json.loads(json.dumps(args))
            outcome = check_result(wire, result, prefix=SANDBOX_PREFIX)
            outcomes[outcome.split()[0]] += 1
            OUTCOMES[outcome] += 1

        prop()
        # Alive and answering at the end.
        portal.call(session.send_ping)
        good = {"service_id": "svc_openai_001", "credential_type": "bearer", "credential_value": CANARY}
        final = call_tool(portal, session, TOOL_NAME, good)
        assert final.is_error is False
        stderr = err.text()
    assert outcomes["invalid"] > 0
    assert CANARY not in stderr
    assert "Traceback" not in stderr
