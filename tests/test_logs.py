"""The redaction filter: SDK lines that carry bodies are dropped, registered secrets are masked."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from danube_mcp.logs import REDACTED, SECRETS, setup_logging

SECRET = "sk-CANARY-logs-0123456789"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    setup_logging("DEBUG", buf)
    yield buf
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_registered_secret_is_masked_everywhere(stream: io.StringIO) -> None:
    log = logging.getLogger("danube_mcp.test")
    with SECRETS.holding(SECRET):
        log.warning("value %s in args", SECRET)
        log.warning(f"value {SECRET} in msg")
        try:
            raise ValueError(SECRET)
        except ValueError:
            log.exception("boom")
    log.warning("after: %s", SECRET)  # no longer registered: this one is the test's own fault
    text = stream.getvalue()
    assert text.count(REDACTED) >= 3
    assert text.count(SECRET) == 1 and "after: " + SECRET in text


@pytest.mark.parametrize(
    "line",
    [
        "Failed to validate request: 1 validation error ... input_value={'x': 'y'}",
        "Received JSON: b'{...}'",
        "Received exception from stream: ...",
        "Message that failed validation: method='tools/call'",
        "Sending client message: ...",
    ],
)
def test_sdk_lines_with_bodies_are_dropped(stream: io.StringIO, line: str) -> None:
    logging.getLogger().warning(line)  # the SDK logs some of these on the root logger
    logging.getLogger("mcp.server.sse").error(line)
    assert stream.getvalue() == ""


def test_sdk_is_pinned_to_warning(stream: io.StringIO) -> None:
    # The SDK's DEBUG lines carry bodies and its INFO lines session ids.
    logging.getLogger("mcp.server.sse").debug("debug detail")
    logging.getLogger("mcp.server.sse").info("info line")
    logging.getLogger("mcp.server.sse").warning("warning line")
    assert "debug detail" not in stream.getvalue()
    assert "info line" not in stream.getvalue()
    assert "warning line" in stream.getvalue()


def test_registry_counts_and_repr() -> None:
    with SECRETS.holding(SECRET), SECRETS.holding(SECRET):
        assert SECRET in SECRETS.snapshot()
    assert SECRET not in SECRETS.snapshot()
    assert SECRET not in repr(SECRETS)


def test_open_secure_input_link_tokens_are_masked(stream: io.StringIO) -> None:
    """An access log line with a secure-input link's path must not give the link away."""
    import anyio

    from danube_mcp.secure_input import PATH_PREFIX, SecureInputBroker

    broker = SecureInputBroker(ttl=30)
    _, token = anyio.run(lambda: broker.open_entry("svc_openai_001", "bearer", caller="c", flow="link"))
    logging.getLogger("uvicorn.access").warning('"GET %s%s HTTP/1.1" 200', PATH_PREFIX, token)
    text = stream.getvalue()
    assert token not in text and REDACTED in text
    assert token not in SECRETS.snapshot()  # masked by its path's pattern, not by registration
