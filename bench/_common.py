"""Shared benchmark plumbing: server commands, child processes, a raw stdio JSON-RPC client, a raw HTTP
client for streamable HTTP, /proc readings and small statistics helpers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import json
import os
import re
import select
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SRC = REPO / "src"
RESULTS = BENCH / "results"
REFERENCE_CMD = f"python {BENCH / 'reference_server.py'}"
FASTMCP1_SCRIPT = BENCH / "reference_fastmcp1.py"
DEFAULT_HTTP_ARGS = "--transport streamable-http --port 0"
LISTEN_RE = re.compile(rb"listening on (https?://[^\s/]+)")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROTOCOL_VERSION = "2025-11-25"
API_KEY = "bench-api-key"
SECRET = "sk-bench-0123456789abcdef"

Json = dict[str, Any]


# --------------------------------------------------------------------------- statistics


def pct(values: Sequence[float], p: float) -> float:
    """Percentile with linear interpolation (p in 0..100); nan for no values."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def paired_figure(ours: Sequence[float], ref: Sequence[float], unit: str, **extra: Any) -> Json:
    """Medians of each side, and the median (and range) of the per-round ratios ours[i] / ref[i]."""
    ratios = [ratio(a, b) for a, b in zip(ours, ref, strict=True)]
    return figure(
        median(ours), median(ref), unit, median(ratios), ratio_range=[min(ratios), max(ratios)], **extra
    )


def figure(ours: float, ref: float, unit: str, ratio_value: float | None = None, **extra: Any) -> Json:
    return {
        "ours": ours,
        "ref": ref,
        "unit": unit,
        "ratio": ratio(ours, ref) if ratio_value is None else ratio_value,
    } | extra


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or x != x:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


FIGURE_HEADER = ["unit", "ours", "ref", "ratio", "ratio range"]
NUMERIC_COLUMNS = ("ours", "ref", "ratio", "ratio range")


def figure_cells(f: Json) -> list[str]:
    """unit, ours, ref, ratio and the min-max of the per-round ratios (when paired)."""
    spread = f.get("ratio_range")
    return [
        f["unit"],
        fmt(f["ours"]),
        fmt(f["ref"]),
        fmt(f["ratio"]),
        f"{fmt(spread[0])}-{fmt(spread[1])}" if spread else "",
    ]


def print_rows(
    header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[str], out: IO[str] = sys.stdout
) -> None:
    """A plain aligned text table; columns named in `numeric` are right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = [h in numeric for h in header]
    for r in [header, ["-" * w for w in widths], *rows]:
        cells = (c.rjust(w) if rj else c.ljust(w) for c, w, rj in zip(r, widths, right, strict=True))
        print("  ".join(cells).rstrip(), file=out)


def print_figures(title: str, figures: dict[str, Json], out: IO[str] = sys.stdout) -> None:
    print(f"\n== {title}", file=out)
    rows = [[name, *figure_cells(f)] for name, f in figures.items()]
    print_rows(["figure", *FIGURE_HEADER], rows, NUMERIC_COLUMNS, out)


def abba(rounds: int) -> Iterator[tuple[str, str]]:
    """Per round, the order of the two sides: A B, B A, A B, ... so neither always runs first (drift cancels)."""
    for r in range(rounds):
        yield ("ours", "ref") if r % 2 == 0 else ("ref", "ours")


def rotations(sides: Sequence[str], rounds: int) -> Iterator[tuple[str, ...]]:
    """Per round, an order of any number of sides, cycling through all permutations (2 sides: ``abba``)."""
    orders = list(itertools.permutations(sides))
    for r in range(rounds):
        yield orders[r % len(orders)]


def loadavg() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (nan when unavailable)."""
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), in seconds. Resolution is 1/CLK_TCK (usually 10 ms)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine has spent busy since boot (all cores, from /proc/stat)."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_cpu_seconds() -> float:
    """CPU-seconds of this process and its reaped children (every bench child is reaped by the end)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def wait_idle(pids: Sequence[int], quiet: float = 0.2, timeout: float = 10.0) -> bool:
    """Wait until none of `pids` used CPU for `quiet` seconds (e.g. session teardown after a phase)."""
    deadline = time.monotonic() + timeout
    last = [cpu_seconds(p) for p in pids]
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = [cpu_seconds(p) for p in pids]
        if now == last:
            return True
        last = now
    return False


def proc_status_kib(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(key.encode() + b":"):
                return int(line.split()[1])
    raise KeyError(key)


# --------------------------------------------------------------------------- server commands and env


@dataclass(frozen=True)
class ServerCmd:
    """A server under test: its stdio argv and the extra args that switch it to streamable HTTP."""

    label: str
    argv: tuple[str, ...]
    http_args: tuple[str, ...] = tuple(shlex.split(DEFAULT_HTTP_ARGS))
    http_path: str = "/mcp"

    @property
    def is_python(self) -> bool:
        return Path(self.argv[0]).name.startswith("python")

    def http_argv(self) -> list[str]:
        return [*self.argv, *self.http_args]


def parse_cmd(cmd: str) -> tuple[str, ...]:
    """Split a command; a leading ``python``/``python3`` means this interpreter (the venv's)."""
    argv = shlex.split(cmd)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return tuple(argv)


def server_env(upstream_url: str, extra: Sequence[str] = ()) -> dict[str, str]:
    """The same env for both servers: ours minus DANUBE_*/PYTHON* leftovers, plus the upstream and src/."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DANUBE_", "PYTHON", "MCP_", "FASTMCP_"))}
    env.update(DANUBE_API_URL=upstream_url, DANUBE_API_KEY=API_KEY, PYTHONPATH=str(SRC))
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--env expects KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", default=REFERENCE_CMD, help='server under test, e.g. "python -m danube_mcp"'
    )
    parser.add_argument(
        "--reference", default=REFERENCE_CMD, help="yardstick command (default: the bare-SDK one)"
    )
    parser.add_argument(
        "--fastmcp1-python",
        default=None,
        metavar="PYTHON",
        help="an interpreter with mcp 1.x + httpx: cold start is also compared with "
        "bench/reference_fastmcp1.py run by it (a bare mcp 1.x FastMCP server)",
    )
    parser.add_argument(
        "--http-args", default=DEFAULT_HTTP_ARGS, help="args that switch a server to streamable HTTP"
    )
    parser.add_argument("--http-path", default="/mcp", help="streamable-HTTP endpoint path")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra env for both servers"
    )
    parser.add_argument(
        "--header", action="append", default=[], metavar="NAME: VALUE", help="extra HTTP header to both"
    )
    parser.add_argument(
        "--upstream", default=None, help="URL of a running fake upstream (default: start one)"
    )


def servers_from_args(args: argparse.Namespace) -> dict[str, ServerCmd]:
    http_args = tuple(shlex.split(args.http_args))
    return {
        "ours": ServerCmd("ours", parse_cmd(args.server), http_args, args.http_path),
        "ref": ServerCmd("ref", parse_cmd(args.reference), http_args, args.http_path),
    }


def fastmcp1_from_args(args: argparse.Namespace) -> ServerCmd | None:
    """The mcp 1.x FastMCP yardstick, when ``--fastmcp1-python`` names an interpreter for it."""
    python = getattr(args, "fastmcp1_python", None)
    if not python:
        return None
    if os.sep in python:  # a path, not a name on PATH: the servers run with cwd = the repo
        python = os.path.abspath(os.path.expanduser(python))
    return ServerCmd("fastmcp1", (python, str(FASTMCP1_SCRIPT)))


def headers_from_args(args: argparse.Namespace) -> list[tuple[str, str]]:
    out = []
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep:
            raise SystemExit(f"--header expects 'Name: value', got {h!r}")
        out.append((name.strip(), value.strip()))
    return out


# --------------------------------------------------------------------------- child processes


@dataclass
class Child:
    """A child process whose stderr goes to a temp file (never an unread pipe)."""

    proc: subprocess.Popen[bytes]
    stderr: IO[bytes]
    started: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_size(self) -> int:
        return os.fstat(self.stderr.fileno()).st_size

    def stderr_text(self, limit: int = 4000) -> str:
        self.stderr.seek(0)
        data = self.stderr.read()
        return data[-limit:].decode("utf-8", "replace")

    def wait_for_stderr(self, pattern: re.Pattern[bytes], timeout: float = 30.0) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            self.stderr.seek(0)
            m = pattern.search(self.stderr.read())
            if m:
                return m
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.proc.args!r} exited ({self.proc.returncode}):\n{self.stderr_text()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no {pattern.pattern!r} on stderr of {self.proc.args!r}:\n{self.stderr_text()}"
                )
            time.sleep(0.005)

    def wait_exit(self, timeout: float) -> bool:
        """Wait for exit with sub-millisecond precision (Popen.wait polls with sleeps of up to 50 ms)."""
        try:
            fd = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):  # no pidfd: poll finely instead
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.0005)
            return self.proc.poll() is not None
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
        if ready:
            self.proc.wait()
        return bool(ready)

    def close(self, timeout: float = 5.0) -> None:
        """Close stdin, then SIGTERM, then SIGKILL; always reaps."""
        proc = self.proc
        try:
            if proc.stdin is not None and not proc.stdin.closed:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            if proc.poll() is None:
                try:
                    proc.wait(0.5 if proc.stdin is not None else 0)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
            self.stderr.close()


def spawn(argv: Sequence[str], env: dict[str, str], stdio: bool = True) -> Child:
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - owned and closed by Child.close
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if stdio else subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdio else subprocess.DEVNULL,
        stderr=stderr,
        env=env,
        cwd=REPO,
        bufsize=0,
    )
    return Child(proc, stderr, started)


# --------------------------------------------------------------------------- JSON-RPC messages


def initialize_msg(rid: int) -> Json:
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "0"},
        },
    }


INITIALIZED_MSG: Json = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def call_msg(rid: int, service_id: str = "svc_bench_001") -> Json:
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {
            "name": "store_credential",
            "arguments": {"service_id": service_id, "credential_type": "bearer", "credential_value": SECRET},
        },
    }


def call_ok(msg: Json) -> bool:
    result = msg.get("result")
    return isinstance(result, dict) and result.get("isError") is False and bool(result.get("content"))


def encode(msg: Json) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- raw stdio client


class StdioClient:
    """Newline-delimited JSON-RPC over a child's pipes, synchronous and as cheap as possible."""

    def __init__(self, child: Child) -> None:
        assert child.proc.stdin is not None and child.proc.stdout is not None
        self.child = child
        self._in = child.proc.stdin.fileno()
        self._out = child.proc.stdout.fileno()
        self._buf = bytearray()
        self._next_id = 1

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def send(self, msg: Json) -> None:
        self.send_raw(encode(msg) + b"\n")

    def send_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._in, view)
            view = view[n:]

    def read_message(self, timeout: float = 30.0) -> Json:
        deadline = time.monotonic() + timeout
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                if line.strip():
                    msg: Json = json.loads(line)
                    return msg
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no message from server on stdout")
            ready, _, _ = select.select([self._out], [], [], remaining)
            if ready:
                chunk = os.read(self._out, 1 << 16)
                if not chunk:
                    raise EOFError(f"server closed stdout:\n{self.child.stderr_text()}")
                self._buf += chunk

    def wait_response(self, rid: int, timeout: float = 30.0) -> Json:
        while True:
            msg = self.read_message(timeout)
            if msg.get("id") == rid and ("result" in msg or "error" in msg):
                return msg

    def request(self, msg: Json, timeout: float = 30.0) -> Json:
        self.send(msg)
        return self.wait_response(msg["id"], timeout)

    def initialize(self) -> Json:
        resp = self.request(initialize_msg(self.next_id()))
        if "result" not in resp:
            raise RuntimeError(f"initialize failed: {resp}")
        self.send(INITIALIZED_MSG)
        return resp

    def tools_list(self) -> Json:
        return self.request({"jsonrpc": "2.0", "id": self.next_id(), "method": "tools/list"})

    def call(self) -> Json:
        return self.request(call_msg(self.next_id()))

    def send_calls(self, n: int) -> list[int]:
        """Write n tools/call requests at once; returns their ids."""
        ids = [self.next_id() for _ in range(n)]
        self.send_raw(b"".join(encode(call_msg(i)) + b"\n" for i in ids))
        return ids

    def call_many(self, n: int, timeout: float = 60.0) -> list[Json]:
        """n tools/call requests written at once, then all n answers read (any order)."""
        return self.read_answers(self.send_calls(n), timeout)

    def read_answers(self, ids: Sequence[int], timeout: float = 60.0) -> list[Json]:
        pending = set(ids)
        out = []
        while pending:
            msg = self.read_message(timeout)
            if msg.get("id") in pending:
                pending.discard(msg["id"])
                out.append(msg)
        return out

    def timed_calls(self, n: int) -> tuple[list[float], int]:
        """n sequential calls; returns per-call latencies (seconds) and the number of successes."""
        lat = []
        ok = 0
        pc = time.perf_counter
        for _ in range(n):
            t0 = pc()
            resp = self.call()
            lat.append(pc() - t0)
            ok += call_ok(resp)
        return lat, ok


@contextlib.contextmanager
def stdio_server(cmd: ServerCmd, env: dict[str, str], initialize: bool = True) -> Iterator[StdioClient]:
    child = spawn(cmd.argv, env)
    try:
        client = StdioClient(child)
        if initialize:
            client.initialize()
        yield client
    finally:
        child.close()


# --------------------------------------------------------------------------- fake upstream control


class Upstream:
    """Control client for a fake upstream (started here as a separate process, or given by URL)."""

    def __init__(self, url: str, child: Child | None = None) -> None:
        self.url = url
        self.child = child
        m = re.match(r"http://([^:/]+):(\d+)", url)
        if not m:
            raise ValueError(f"bad upstream URL {url!r}")
        self.host, self.port = m.group(1), int(m.group(2))

    def _req(self, method: str, path: str, body: Json | None = None) -> Json:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"content-type": "application/json"})
            resp = conn.getresponse()
            out: Json = json.loads(resp.read())
            return out
        finally:
            conn.close()

    def stats(self) -> Json:
        return self._req("GET", "/_stats")

    def reset(self) -> None:
        self._req("POST", "/_reset", {})

    def set_delay(self, delay_ms: float) -> None:
        self._req("POST", "/_control", {"delay_ms": delay_ms})

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.child.pid) if self.child else None

    def close(self) -> None:
        if self.child is not None:
            self.child.close()


@contextlib.contextmanager
def upstream(url: str | None = None, delay_ms: float = 0.0) -> Iterator[Upstream]:
    """Use the upstream at ``url``, or start ``fake_upstream.py`` in its own process for the duration."""
    if url:
        up = Upstream(url)
        up.set_delay(delay_ms)
        yield up
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    child = spawn(
        [sys.executable, str(BENCH / "fake_upstream.py"), "--delay-ms", str(delay_ms)], env, stdio=False
    )
    try:
        m = child.wait_for_stderr(LISTEN_RE, 10)
        yield Upstream(m.group(1).decode(), child)
    finally:
        child.close()


# --------------------------------------------------------------------------- raw streamable-HTTP client


class RawHttpConn:
    """One keep-alive HTTP/1.1 connection with just enough parsing for the MCP streamable-HTTP replies."""

    def __init__(self, host: str, port: int, extra_headers: Sequence[tuple[str, str]] = ()) -> None:
        self.host, self.port = host, port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in extra_headers)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None or self.reader is None:
            await self.connect()
        assert self.writer is not None and self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\ncontent-length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + self.extra + "\r\n"
        self.writer.write(head.encode("latin-1") + body)
        reader = self.reader
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        resp_headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                resp_headers[k.strip().lower()] = v.strip()
        if "content-length" in resp_headers:
            data = await reader.readexactly(int(resp_headers["content-length"]))
        elif resp_headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readline()).split(b";", 1)[0], 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b""):
                        pass
                    break
                parts.append(await reader.readexactly(size + 2))
            data = b"".join(p[:-2] for p in parts)
        elif status in (202, 204, 304) or method == "HEAD":
            data = b""
        else:
            data = await reader.read()
            await self.close()
        if resp_headers.get("connection", "").lower() == "close":
            await self.close()
        return status, resp_headers, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def parse_mcp_body(headers: dict[str, str], body: bytes) -> list[Json]:
    """JSON-RPC messages from a JSON body or from an SSE stream's ``data:`` events."""
    if headers.get("content-type", "").startswith("application/json"):
        parsed = json.loads(body)
        return parsed if isinstance(parsed, list) else [parsed]
    out = []
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"\n".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
        if data.strip():
            out.append(json.loads(data))
    return out


@dataclass
class McpHttpSession:
    """One MCP session over streamable HTTP on its own keep-alive connection (raw, cheap client)."""

    host: str
    port: int
    path: str
    extra_headers: Sequence[tuple[str, str]] = ()
    session_id: str | None = None
    conn: RawHttpConn = field(init=False)
    _next_id: int = 1

    def __post_init__(self) -> None:
        self.conn = RawHttpConn(self.host, self.port, self.extra_headers)

    def _headers(self) -> dict[str, str]:
        h = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        if self.session_id:
            h["mcp-session-id"] = self.session_id
            h["mcp-protocol-version"] = PROTOCOL_VERSION
        return h

    async def post(self, msg: Json) -> Json | None:
        status, headers, body = await self.conn.request("POST", self.path, self._headers(), encode(msg))
        if "mcp-session-id" in headers:
            self.session_id = headers["mcp-session-id"]
        if "id" not in msg:
            if status not in (200, 202):
                raise RuntimeError(f"notification answered {status}: {body[:300]!r}")
            return None
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
        for m in parse_mcp_body(headers, body):
            if m.get("id") == msg["id"] and ("result" in m or "error" in m):
                return m
        raise RuntimeError(f"no JSON-RPC answer in body: {body[:300]!r}")

    async def open(self) -> None:
        resp = await self.post(initialize_msg(1))
        if not resp or "result" not in resp:
            raise RuntimeError(f"initialize failed: {resp}")
        await self.post(INITIALIZED_MSG)

    async def call(self) -> bool:
        self._next_id += 1
        resp = await self.post(call_msg(self._next_id))
        return resp is not None and call_ok(resp)

    async def close(self) -> None:
        try:
            if self.session_id:
                with contextlib.suppress(OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
                    await self.conn.request("DELETE", self.path, self._headers())
        finally:
            await self.conn.close()


@dataclass
class HttpServer:
    child: Child
    host: str
    port: int
    path: str

    async def open_sessions(
        self, n: int, extra_headers: Sequence[tuple[str, str]] = ()
    ) -> list[McpHttpSession]:
        sessions = [McpHttpSession(self.host, self.port, self.path, extra_headers) for _ in range(n)]
        await asyncio.gather(*(s.open() for s in sessions))
        return sessions


@contextlib.contextmanager
def http_server(cmd: ServerCmd, env: dict[str, str], timeout: float = 30.0) -> Iterator[HttpServer]:
    child = spawn(cmd.http_argv(), env, stdio=False)
    try:
        url = child.wait_for_stderr(LISTEN_RE, timeout).group(1).decode()
        m = re.match(r"https?://\[?([^\]]+?)\]?:(\d+)$", url)
        if not m:
            raise RuntimeError(f"cannot parse listening URL {url!r}")
        host = "127.0.0.1" if m.group(1) in ("0.0.0.0", "localhost") else m.group(1)
        yield HttpServer(child, host, int(m.group(2)), cmd.http_path)
    finally:
        child.close()


async def close_sessions(sessions: Sequence[McpHttpSession]) -> None:
    await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


# --------------------------------------------------------------------------- script plumbing


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so the finally blocks reap every child process."""

    def _raise(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _raise)


def make_parser(
    description: str, add_args: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    add_common_args(parser)
    add_args(parser)
    return parser


def run_script(
    description: str,
    add_args: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], Json],
    argv: list[str] | None = None,
) -> int:
    """Entry point of each measurement script: parse, run, print the figures, optionally save JSON."""
    parser = make_parser(description, add_args)
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    result = run(args)
    print_figures(description, result["figures"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0
