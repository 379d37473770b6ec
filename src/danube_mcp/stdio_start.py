"""Start the stdio server with a fast start: the SDK loads on a thread while the handshake is served.

The order of a start (``danube-mcp`` over stdio, the real command only):

1. this thread takes stdout for the protocol and looks for the snapshot cached for exactly this
   install and these options (:func:`danube_mcp.transports.fast_start.cache_key`);
2. a daemon thread opens the Danube client and imports the SDK (and, when no snapshot was cached,
   records one through the SDK and caches it for the next start);
3. meanwhile this thread answers ``initialize``, ``tools/list``, ``server/discover`` and ``ping``
   from the snapshot (:func:`~danube_mcp.transports.fast_start.run_fast_phase`);
4. once the SDK is loaded, the SDK's stdio transport carries on with everything read so far, in
   order (:class:`~danube_mcp.transports.fast_start.Handoff`).

Without a snapshot (the first start after an install or upgrade, or ``DANUBE_MCP_FAST_START=0``),
step 3 is skipped and the start is an ordinary one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from danube_mcp.transports import fast_start
from danube_mcp.transports.lines import claim_stdout

if TYPE_CHECKING:
    from danube_mcp.backend import Backend
    from danube_mcp.cli import RunOptions

logger = logging.getLogger("danube_mcp")

# Tests only: the loading thread waits until one byte can be read from this FIFO, so a test can
# hold the SDK back and see the fast start answer on its own (waiting on a condition, not a sleep).
TEST_HOLD_ENV = "_DANUBE_MCP_TEST_HOLD_SDK"
# At exit, how long to wait for a snapshot still being recorded (a first start that ends at once).
RECORD_WAIT = 2.0


def server_options(opts: RunOptions) -> dict[str, Any]:
    """The options that shape the server's answers (everything ``build_server`` is given)."""
    return {
        "secure_input": opts.secure_input,
        "sandbox": opts.sandbox,
        "api_key_problem": None if opts.sandbox else opts.settings.api_key_problem,
    }


def _build_server(opts: RunOptions, backend: Backend) -> Any:
    from danube_mcp.secure_input import SecureInputBroker
    from danube_mcp.tool.handler import build_server

    broker = SecureInputBroker(ttl=opts.settings.secure_input_ttl) if opts.secure_input else None
    server, _ = build_server(
        backend.client, sandbox=backend.sandbox, api_key_problem=backend.api_key_problem, secure_input=broker
    )
    return server


class _Loader:
    """The loading thread: the Danube client, the SDK, and (once) the snapshot."""

    def __init__(self, opts: RunOptions, key: str | None, record: bool) -> None:
        self.opts = opts
        self.key = key
        self.record = record
        self.backend: Backend | None = None
        self.error: BaseException | None = None
        self.ready_r, self._ready_w = os.pipe()
        self.thread = threading.Thread(target=self._run, name="danube-mcp-load", daemon=True)

    def _run(self) -> None:
        try:
            from danube_mcp.cli import open_process_backend

            self.backend = open_process_backend(self.opts)
            if self.backend is not None:
                import danube_mcp.transports.stdio  # noqa: F401  (the SDK, for the transport)
            hold = os.environ.get(TEST_HOLD_ENV)
            if hold:
                with open(hold, "rb") as fifo:
                    fifo.read(1)
        except BaseException as exc:  # handed to the main thread, which raises it
            self.error = exc
        finally:
            os.write(self._ready_w, b"x")
            os.close(self._ready_w)
        # The server is served from here on; the snapshot for the next start is recorded meanwhile.
        if self.error is None and self.backend is not None and self.record and self.key is not None:
            self._record(self.backend)

    def wait_ready(self) -> None:
        while not os.read(self.ready_r, 1):
            pass  # pragma: no cover  (the write end is only closed after the byte is written)

    def _record(self, backend: Backend) -> None:
        import anyio

        from danube_mcp.transports.fast_snapshot import record

        assert self.key is not None
        try:
            snapshot = anyio.run(record, _build_server(self.opts, backend))
        except Exception as exc:  # no snapshot means no fast start, nothing worse
            logger.debug("fast start: recording the snapshot failed (%s)", type(exc).__name__)
            return
        fast_start.save_snapshot(self.key, snapshot)


def run_stdio(opts: RunOptions) -> int:
    """Serve MCP over stdio until stdin ends; the exit code."""
    from danube_mcp.cli import _fast_exit, serve_stdio

    # Pipes only (as hosts start servers): a terminal or a file gets an ordinary start, and no
    # snapshot is recorded for it.
    usable = fast_start.pipes(sys.stdin, sys.stdout)
    key = fast_start.cache_key(server_options(opts)) if usable else None
    snapshot = fast_start.load_snapshot(key) if key is not None else None
    loader = _Loader(opts, key, record=snapshot is None)
    loader.thread.start()
    protocol_out = claim_stdout()
    handoff = None
    if snapshot is not None:
        handoff = fast_start.run_fast_phase(
            sys.stdin.fileno(), protocol_out.fileno(), loader.ready_r, fast_start.FastResponder(snapshot)
        )
        if handoff.eof and not handoff.needs_sdk:
            # The client said all it had to and every request is answered: no need to wait for the
            # SDK (nothing was opened yet that needs closing).
            _fast_exit(0)
        if key is not None:
            handoff.on_mismatch = lambda: fast_start.discard_snapshot(key)
    if handoff is None:
        loader.wait_ready()
    with contextlib.suppress(OSError):
        os.close(loader.ready_r)
    if loader.error is not None:
        raise loader.error
    if loader.backend is None:
        return 2
    import anyio

    anyio.run(serve_stdio, opts, loader.backend, handoff, protocol_out)
    loader.thread.join(RECORD_WAIT)  # a snapshot being recorded: let it reach the cache
    if sys.getprofile() is None and sys.gettrace() is None:
        _fast_exit(0)
    return 0
