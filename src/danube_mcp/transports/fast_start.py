"""Fast start over stdio: answer the handshake while the MCP SDK is still being imported.

Importing the SDK (``mcp``, ``mcp_types``' pydantic models of every protocol revision) takes most of
a cold start, yet the first answers a host waits for are fixed for the life of the process:
``initialize`` for each protocol revision, ``server/discover``, ``tools/list`` and ``ping``. So a
stdio server imports the SDK on a background thread and, meanwhile, answers those requests here
from a *snapshot*: the answers the SDK itself gave for the same server, recorded by
:mod:`danube_mcp.transports.fast_snapshot` and kept in a cache file keyed by everything that shapes
them (this package's source files, the installed SDK and pydantic, the interpreter and the server's
options). Without a matching snapshot there is no fast start.

Wrong answers are worse than slow ones, so this module answers only what it can answer exactly:

* a request answered here has one of a few fixed shapes (checked field by field below, stricter than
  the SDK); anything else, and everything after it, waits for the SDK, in order;
* the state the SDK keeps per connection (which era the first request chose, the version
  ``initialize`` negotiated, whether ``initialize`` came first) is followed here, and any message
  that would depend on state this module does not follow goes to the SDK;
* every message read here is later replayed to the SDK, in order, so its state ends up exactly as if
  it had read them itself; the requests answered here are replayed under private ids and the SDK's
  answers to them are compared with the ones sent and then dropped (a difference is logged and the
  cache file deleted).

No SDK or pydantic import happens in this module: that is its point.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import select
import stat
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from danube_mcp.transports.lines import LineSplitter, too_large

logger = logging.getLogger("danube_mcp.transports.fast_start")

SNAPSHOT_FORMAT: Final = 1
PROTOCOL_VERSION_KEY: Final = "io.modelcontextprotocol/protocolVersion"
CLIENT_INFO_KEY: Final = "io.modelcontextprotocol/clientInfo"
CLIENT_CAPABILITIES_KEY: Final = "io.modelcontextprotocol/clientCapabilities"
# The protocol version the snapshot's "unsupported version" answer was recorded with; replaced by
# the version a client asks for.
SENTINEL_VERSION: Final = "0000-00-00-danube-mcp-unsupported"

# Bounds on the fast phase: past them, input waits for the SDK (and stdin is not read meanwhile).
MAX_FAST_ANSWERS: Final = 64
MAX_HELD_LINES: Final = 256
MAX_HELD_BYTES: Final = 16 * 1024 * 1024
_READ_CHUNK: Final = 64 * 1024

# The packages whose installed versions shape the SDK's answers.
_SDK_DISTRIBUTIONS: Final = ("mcp", "mcp_types", "pydantic", "pydantic_core")
_DIST_INFO: Final = re.compile(r"^(mcp|mcp_types|pydantic|pydantic_core)-([^-]+)\.dist-info$")


# ------------------------------------------------------------------------------------------------
# The snapshot cache


def cache_dir() -> Path:
    explicit = os.environ.get("DANUBE_MCP_CACHE_DIR", "").strip()
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "danube-mcp"


def cache_key(options: dict[str, Any]) -> str | None:
    """Everything that shapes the recorded answers, as one string; None if the SDK's installed
    versions cannot be told (no fast start then)."""
    from danube_mcp import __version__

    parts = [f"format={SNAPSHOT_FORMAT}", f"danube-mcp {__version__}", sys.version, sys.prefix]
    parts.append(json.dumps(options, sort_keys=True))
    package = Path(__file__).resolve().parent.parent
    for root, dirs, files in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                st = os.stat(path)
                parts.append(f"{os.path.relpath(path, package)}:{st.st_size}:{st.st_mtime_ns}")
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            m = _DIST_INFO.match(name)
            if m is None or m.group(1) in found:
                continue
            try:
                st = os.stat(os.path.join(entry or ".", name, "RECORD"))
            except OSError:
                continue
            found[m.group(1)] = f"{name}:{st.st_size}:{st.st_mtime_ns}"
    if any(d not in found for d in _SDK_DISTRIBUTIONS):
        return None
    parts.extend(found[d] for d in _SDK_DISTRIBUTIONS)
    return "\n".join(parts)


def cache_path(key: str) -> Path:
    return cache_dir() / f"stdio-answers-{zlib.crc32(key.encode()):08x}.json"


def _private(st: os.stat_result) -> bool:
    """Owned by this user and writable by nobody else: another local user could otherwise plant
    answers (a tool description is text a model reads)."""
    return (not hasattr(os, "getuid") or st.st_uid == os.getuid()) and not st.st_mode & 0o022


def load_snapshot(key: str) -> dict[str, Any] | None:
    """The snapshot cached for ``key``, or None (missing, stale, unsafe or unreadable)."""
    path = cache_path(key)
    try:
        if not _private(os.stat(path.parent)):
            return None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _private(st) or st.st_size > 1024 * 1024:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)
    if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("snapshot"), dict):
        return None
    snapshot: dict[str, Any] = data["snapshot"]
    return snapshot if snapshot.get("format") == SNAPSHOT_FORMAT else None


def save_snapshot(key: str, snapshot: dict[str, Any]) -> None:
    """Write the cache file atomically, readable by this user only. Failures are only logged."""
    path = cache_path(key)
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _private(os.stat(path.parent)):
            logger.debug("fast start: cache folder is not private; not writing the snapshot")
            return
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps({"key": key, "snapshot": snapshot}).encode())
        os.replace(tmp, path)
    except OSError as exc:
        logger.debug("fast start: could not write the snapshot cache (%s)", type(exc).__name__)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def discard_snapshot(key: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(cache_path(key))


# ------------------------------------------------------------------------------------------------
# What is answered here: shapes checked field by field, stricter than the SDK


class _Refused(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Refused
    return obj


def _no_constant(name: str) -> Any:
    raise _Refused  # NaN, Infinity


def parse(line: bytes) -> dict[str, Any] | None:
    """A JSON object with no repeated keys and no NaN/Infinity, or None."""
    try:
        obj = json.loads(line.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (_Refused, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _clean_str(value: Any, limit: int = 4096) -> bool:
    if not isinstance(value, str) or len(value) > limit:
        return False
    try:
        value.encode("utf-8")  # a lone surrogate (an escaped one in the JSON) fails here
    except UnicodeEncodeError:
        return False
    return True


def _plain_json(value: Any, depth: int = 0) -> bool:
    """JSON data of modest depth: clean strings, finite numbers, no booleans posing as numbers."""
    if depth > 8:
        return False
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) < 2**53
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return _clean_str(value)
    if isinstance(value, list):
        return len(value) <= 64 and all(_plain_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return len(value) <= 64 and all(
            _clean_str(k, 256) and _plain_json(v, depth + 1) for k, v in value.items()
        )
    return False


def _empty_objects(value: Any, allowed: frozenset[str]) -> bool:
    return isinstance(value, dict) and set(value) <= allowed and all(v == {} for v in value.values())


def _bool_fields(value: Any, allowed: frozenset[str]) -> bool:
    return (
        isinstance(value, dict) and set(value) <= allowed and all(isinstance(v, bool) for v in value.values())
    )


def _json_objects(value: Any) -> bool:
    return isinstance(value, dict) and all(
        _clean_str(k, 256) and isinstance(v, dict) and _plain_json(v) for k, v in value.items()
    )


_CAPABILITY_CHECKS: Final[dict[str, Callable[[Any], bool]]] = {
    "roots": lambda v: _bool_fields(v, frozenset({"listChanged"})),
    "sampling": lambda v: _empty_objects(v, frozenset({"context", "tools"})),
    "elicitation": lambda v: _empty_objects(v, frozenset({"form", "url"})),
    "experimental": _json_objects,
    "extensions": _json_objects,
}


def client_capabilities_ok(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and set(value) <= set(_CAPABILITY_CHECKS)
        and all(_CAPABILITY_CHECKS[k](v) for k, v in value.items())
    )


def client_info_ok(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and {"name", "version"} <= set(value) <= {"name", "version", "title"}
        and all(_clean_str(v, 1024) for v in value.values())
    )


def _id_ok(rid: Any) -> bool:
    if isinstance(rid, bool):
        return False
    if isinstance(rid, int):
        return abs(rid) < 2**53
    return _clean_str(rid, 1024)


def _envelope(obj: dict[str, Any], request: bool) -> bool:
    keys = set(obj)
    required = {"jsonrpc", "method", "id"} if request else {"jsonrpc", "method"}
    return (
        required <= keys <= required | {"params"}
        and obj["jsonrpc"] == "2.0"
        and (not request or _id_ok(obj["id"]))
        and isinstance(obj.get("params", {}), dict)
    )


def _no_params(obj: dict[str, Any]) -> bool:
    params: object = obj.get("params", {})
    return params == {}


def _modern_meta(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The ``_meta`` of a 2026-07-28 request this module may answer: params carry nothing else,
    the envelope has the version (a string) and the capabilities, client info optional."""
    params = obj.get("params")
    if not isinstance(params, dict) or set(params) != {"_meta"}:
        return None
    meta = params["_meta"]
    if not isinstance(meta, dict) or not (
        {PROTOCOL_VERSION_KEY, CLIENT_CAPABILITIES_KEY}
        <= set(meta)
        <= {PROTOCOL_VERSION_KEY, CLIENT_CAPABILITIES_KEY, CLIENT_INFO_KEY}
    ):
        return None
    if not _clean_str(meta[PROTOCOL_VERSION_KEY], 64):
        return None
    if not client_capabilities_ok(meta[CLIENT_CAPABILITIES_KEY]):
        return None
    if CLIENT_INFO_KEY in meta and not client_info_ok(meta[CLIENT_INFO_KEY]):
        return None
    return meta


def _has_modern_key(obj: dict[str, Any]) -> bool:
    params = obj.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return isinstance(meta, dict) and PROTOCOL_VERSION_KEY in meta


# ------------------------------------------------------------------------------------------------
# The responder


@dataclass
class FastResponder:
    """Answers what it can from ``snapshot``; records every line for the SDK to replay."""

    snapshot: dict[str, Any]
    replay: list[bytes] = field(default_factory=list)
    # Private replay id -> the answer sent here (the SDK's answer to it must be the same).
    expected: dict[str, dict[str, Any]] = field(default_factory=dict)
    held_bytes: int = 0
    era: str | None = None  # None until the first request; then "legacy" or "modern"
    version: str | None = None  # legacy: what initialize negotiated
    handing_over: bool = False  # once a message goes to the SDK, all later ones do too
    _token: str = field(default_factory=lambda: os.urandom(8).hex())

    @property
    def answered(self) -> int:
        return len(self.expected)

    def feed(self, line: bytes) -> bytes | None:
        """Take one input line; return the answer to write now, or None."""
        answer = None
        if not self.handing_over:
            try:
                answer = self._answer(line)
            except Exception:  # a snapshot of an unexpected shape: the SDK answers instead
                logger.debug("fast start: the snapshot could not answer; handing over to the SDK")
                answer = None
        if answer is None:
            self.handing_over = True
            self.replay.append(line)
            self.held_bytes += len(line)
            return None
        obj, message = answer
        if "id" in obj:
            private = f"danube-mcp-fast-{self._token}-{len(self.expected)}"
            self.expected[private] = message
            obj = {**obj, "id": private}
            self.replay.append(json.dumps(obj).encode())
            return _encode(message) + b"\n" if message else None
        self.replay.append(line)
        return None

    def _answer(self, line: bytes) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(the parsed message, its answer; {} for a notification that needs none), or None."""
        if not line.strip() or self.answered >= MAX_FAST_ANSWERS:
            return None
        obj = parse(line)
        if obj is None:
            return None
        method = obj.get("method")
        if "id" not in obj:
            if (
                method == "notifications/initialized"
                and _envelope(obj, request=False)
                and _no_params(obj)
                and self.era == "legacy"
                and self.version is not None
            ):
                return obj, {}
            return None
        if not _envelope(obj, request=True) or not isinstance(method, str):
            return None
        if self.era is None:
            self.era = "modern" if method != "initialize" and _has_modern_key(obj) else "legacy"
            if self.era == "legacy" and method != "initialize" and method != "ping":
                self.era = None  # tools/list before initialize: the SDK's refusal is its own
                return None
        result = self._modern(obj, method) if self.era == "modern" else self._legacy(obj, method)
        return None if result is None else (obj, {"jsonrpc": "2.0", "id": obj["id"], **result})

    def _legacy(self, obj: dict[str, Any], method: str) -> dict[str, Any] | None:
        snap = self.snapshot
        if _has_modern_key(obj):
            return None
        if method == "initialize":
            if self.version is not None:
                return None  # a second initialize: the SDK's business
            params = obj.get("params")
            if not (
                isinstance(params, dict)
                and set(params) == {"protocolVersion", "capabilities", "clientInfo"}
                and _clean_str(params["protocolVersion"], 64)
                and client_capabilities_ok(params["capabilities"])
                and client_info_ok(params["clientInfo"])
            ):
                return None
            requested = params["protocolVersion"]
            negotiated = requested if requested in snap["handshake_versions"] else snap["fallback_version"]
            answer = snap["legacy"].get(negotiated, {}).get("initialize")
            if answer is None:
                return None
            self.version = negotiated
            return dict(answer)
        if not _no_params(obj):
            return None
        if method == "ping":
            if self.version is None:
                answer = snap.get("legacy_ping_before_initialize")
            else:
                answer = snap["legacy"].get(self.version, {}).get("ping")
            return None if answer is None else dict(answer)
        if method == "tools/list" and self.version is not None:
            answer = snap["legacy"].get(self.version, {}).get("tools/list")
            return None if answer is None else dict(answer)
        return None

    def _modern(self, obj: dict[str, Any], method: str) -> dict[str, Any] | None:
        snap = self.snapshot
        if method not in ("server/discover", "tools/list", "ping"):
            return None
        meta = _modern_meta(obj)
        if meta is None:
            return None
        version = meta[PROTOCOL_VERSION_KEY]
        if version in snap["modern_versions"]:
            answer = snap["modern"].get(version, {}).get(method)
            return None if answer is None else dict(answer)
        unsupported = snap.get("modern_unsupported")
        if not isinstance(unsupported, dict):
            return None
        text = json.dumps(unsupported)
        sentinel = json.dumps(SENTINEL_VERSION)
        if text.count(sentinel) != 1 or version == SENTINEL_VERSION:
            return None  # the version would not go only where the snapshot put it
        replaced: dict[str, Any] = json.loads(text.replace(sentinel, json.dumps(version)))
        return replaced


# ------------------------------------------------------------------------------------------------
# The fast phase: read stdin, answer, until the SDK is ready


@dataclass
class Handoff:
    """What the fast phase read, for the SDK's stdio transport to carry on with."""

    replay: list[bytes]
    expected: dict[str, dict[str, Any]]
    splitter: LineSplitter
    eof: bool
    needs_sdk: bool  # a line was read that was not answered here
    on_mismatch: Callable[[], None] = lambda: None


def _encode(message: dict[str, Any]) -> bytes:
    """Compact JSON as the SDK writes it: non-ASCII text as UTF-8, not escaped (an unpaired
    surrogate, which UTF-8 cannot carry, stays escaped)."""
    try:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(message, separators=(",", ":")).encode()


def pipes(*files: Any) -> bool:
    """True when every file is a pipe or a socket (as hosts start servers) on POSIX: what
    ``select`` can wait on. Anything else (a terminal, a file, Windows) gets no fast start."""
    if sys.platform == "win32":
        return False
    for f in files:
        try:
            mode = os.fstat(f.fileno()).st_mode
        except (OSError, ValueError):
            return False
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return False
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def run_fast_phase(in_fd: int, out_fd: int, ready_fd: int, responder: FastResponder) -> Handoff:
    """Serve from ``responder`` until ``ready_fd`` becomes readable (the SDK is loaded) or stdin
    ends. Blocking, on the calling thread: the SDK import runs on another one."""

    def on_line(line: bytes) -> None:
        answer = responder.feed(line)
        if answer is not None:
            _write_all(out_fd, answer)

    def on_too_long(prefix: bytearray) -> None:
        _write_all(out_fd, too_large(prefix))

    splitter = LineSplitter(on_line, on_too_long)
    eof = False
    while True:
        held = len(responder.replay) >= MAX_HELD_LINES or responder.held_bytes >= MAX_HELD_BYTES
        watch = [ready_fd] if eof or held else [in_fd, ready_fd]
        try:
            readable, _, _ = select.select(watch, [], [])
        except InterruptedError:
            continue
        if ready_fd in readable:
            break
        if in_fd in readable:
            try:
                chunk = os.read(in_fd, _READ_CHUNK)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                splitter.feed(chunk)
            else:
                splitter.finish()
                eof = True
                if not responder.handing_over:
                    break  # nothing waits for the SDK: the session is over
    return Handoff(responder.replay, responder.expected, splitter, eof, responder.handing_over)
