"""The shared :class:`~danube_mcp.secure_input.store.PendingStore`: Redis, for several processes.

What Redis holds, per pending entry (every key under ``danube-mcp:``, every key with a TTL):

* ``e:<entry id>``: a hash with the status (``st``), the expiry (``x``, ms), the flow (``f``), the
  hashes of the link token and of the caller, and the entry's details (``m``) and outcome (``o``)
  encrypted; it lives until the entry expires, or ``FINISHED_GRACE`` seconds after it is finished
  (a link-flow value typed in time moves the expiry to at least ``LINK_SUBMIT_GRACE`` from then);
* ``v:<entry id>``: the typed value, AES-GCM encrypted and bound to its entry id; removed by the
  one ``take_value`` that gets it (GETDEL inside a script), by ``finish``, or at the entry's TTL;
* ``t:<sha256 of the link token>``: the entry id; never the token that opens the page;
* ``open`` and ``open:<hash of caller>``: sorted sets of open entries, for the caps;
* ``m:<hash of a mark>``: single-use marks (SET NX PX); ``l:<name>``: link-flow names.

Entry ids are random; the link token, the caller identity and the value never appear in a key.
Every change is one Lua script or one atomic command. Waits poll the entry's status with a short,
growing interval, bounded by the caller's deadline (no connection is held while waiting).
Any Redis failure becomes :class:`StoreUnavailable`, whose message names the operation and the
address, never a value. The client reconnects on its own (retries with backoff, health checks).
Redis Cluster is not supported (the scripts touch keys of one entry that may live in different
slots); a single primary, with Sentinel or a managed failover, is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Final

import anyio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from danube_mcp.secure_input.shared import safe_reason
from danube_mcp.secure_input.store import (
    EXPIRED,
    FINISHED_GRACE,
    LINK_SUBMIT_GRACE,
    MAX_PENDING_PER_CALLER,
    MAX_PENDING_TOTAL,
    Entry,
    StoreUnavailable,
    TooManyPending,
    token_ref,
)

logger = logging.getLogger("danube_mcp.secure_input.redis")

PREFIX: Final = "danube-mcp:"
POLL_FIRST: Final = 0.02
POLL_MAX: Final = 0.25
_AAD: Final = b"danube-mcp/shared-state/v1\x00"

# KEYS: entry, token, open, open:caller.
# ARGV: now ms, expires ms, gone ms, max total, max per caller, entry id, token ref, caller ref, meta,
# flow.
_PUT: Final = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then return -1 end
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[5]) then return -2 end
if redis.call('EXISTS', KEYS[1]) == 1 then return -3 end
redis.call('HSET', KEYS[1], 'st', 'open', 'x', ARGV[2], 'f', ARGV[10])
redis.call('HSET', KEYS[1], 'tok', ARGV[7], 'c', ARGV[8], 'm', ARGV[9])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[6], 'PXAT', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[6])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[6])
local gone = tonumber(ARGV[3])
for i = 3, 4 do
  local left = redis.call('PTTL', KEYS[i])
  if left < 0 or left < gone - now then redis.call('PEXPIREAT', KEYS[i], gone) end
end
return 1
"""

# KEYS: entry, value. ARGV: now ms, sealed value, link grace ms, finished grace ms, prefix, entry id.
# A link-flow value typed in time waits at least the link grace for the model's next call (as in
# MemoryStore): the entry, its token, the value and its place among the open entries move with it.
_SUBMIT: Final = """
local f = redis.call('HMGET', KEYS[1], 'st', 'x', 'f', 'tok', 'c')
local now = tonumber(ARGV[1])
if f[1] ~= 'open' or tonumber(f[2]) <= now then return 0 end
local x = tonumber(f[2])
if f[3] == 'link' and now + tonumber(ARGV[3]) > x then x = now + tonumber(ARGV[3]) end
local xs = string.format('%d', x)
local gone = string.format('%d', x + tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], 'st', 'submitted', 'x', xs)
redis.call('SET', KEYS[2], ARGV[2], 'PXAT', xs)
if xs ~= f[2] then
  redis.call('PEXPIREAT', KEYS[1], gone)
  redis.call('PEXPIREAT', ARGV[5] .. 't:' .. f[4], gone)
  for _, key in ipairs({ARGV[5] .. 'open', ARGV[5] .. 'open:' .. f[5]}) do
    redis.call('ZADD', key, xs, ARGV[6])
    local left = redis.call('PTTL', key)
    if left < 0 or left < tonumber(gone) - now then redis.call('PEXPIREAT', key, gone) end
  end
end
return 1
"""

# KEYS: entry, value. ARGV: now ms.
_TAKE: Final = """
local f = redis.call('HMGET', KEYS[1], 'st', 'x')
if f[1] ~= 'submitted' or tonumber(f[2]) <= tonumber(ARGV[1]) then return false end
local v = redis.call('GETDEL', KEYS[2])
if not v then return false end
redis.call('HSET', KEYS[1], 'st', 'taken')
return v
"""

# KEYS: entry, value, open. ARGV: sealed outcome, grace ms, key prefix, entry id, only untaken.
# With "only untaken" (discard) an entry whose value another call has taken is left to that call.
_FINISH: Final = """
local f = redis.call('HMGET', KEYS[1], 'st', 'tok', 'c')
if not f[1] or f[1] == 'finished' then return 0 end
if ARGV[5] == '1' and f[1] ~= 'open' and f[1] ~= 'submitted' then return 0 end
redis.call('HSET', KEYS[1], 'st', 'finished', 'o', ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', ARGV[3] .. 't:' .. f[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[4])
redis.call('ZREM', ARGV[3] .. 'open:' .. f[3], ARGV[4])
return 1
"""

# KEYS: link name. ARGV: entry id.
_CLEAR_LINK: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _hash(label: str, text: str) -> str:
    return hashlib.sha256(f"danube-mcp/{label}\x00{text}".encode()).hexdigest()


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class RedisStore:
    """:class:`~danube_mcp.secure_input.store.PendingStore` in Redis, shared by every process
    configured with the same URL and key."""

    def __init__(
        self,
        url: str,
        *,
        value_key: bytes,
        where: str = "redis",
        prefix: str = PREFIX,
        max_per_caller: int = MAX_PENDING_PER_CALLER,
        max_total: int = MAX_PENDING_TOTAL,
        timeout: float = 2.0,
    ) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import EqualJitterBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        self.where = where
        self._url = url
        self._prefix = prefix
        self._aead = AESGCM(value_key)
        self._max_per_caller = max_per_caller
        self._max_total = max_total
        retry = Retry(EqualJitterBackoff(cap=0.5, base=0.05), retries=2)
        self._redis: Any = aioredis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=retry,
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            health_check_interval=15,
            client_name="danube-mcp",
        )
        self._put = self._redis.register_script(_PUT)
        self._submit = self._redis.register_script(_SUBMIT)
        self._take = self._redis.register_script(_TAKE)
        self._finish = self._redis.register_script(_FINISH)
        self._clear_link = self._redis.register_script(_CLEAR_LINK)

    def __repr__(self) -> str:
        return f"RedisStore({self.where})"

    # -- helpers ---------------------------------------------------------------------------------

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"

    @contextlib.contextmanager
    def _failing(self, what: str) -> Iterator[None]:
        from redis.exceptions import RedisError

        try:
            yield
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(
                f"the shared state store (Redis at {self.where}) failed to {what}: "
                f"{safe_reason(exc, self._url)}"
            ) from None

    def _seal(self, purpose: bytes, entry_id: str, data: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, data, _AAD + purpose + b"\x00" + entry_id.encode())

    def _open(self, purpose: bytes, entry_id: str, blob: bytes) -> bytes | None:
        try:
            return self._aead.decrypt(blob[:12], blob[12:], _AAD + purpose + b"\x00" + entry_id.encode())
        except (InvalidTag, ValueError):
            logger.warning(
                "an entry in the shared state store failed authentication: it was changed in Redis, "
                "or the replicas do not share the same DANUBE_MCP_STATE_KEY"
            )
            return None

    def _entry(self, entry_id: str, fields: dict[bytes, bytes]) -> Entry | None:
        if not fields or b"m" not in fields:
            return None
        meta_raw = self._open(b"meta", entry_id, fields[b"m"])
        if meta_raw is None:
            return None
        meta = json.loads(meta_raw)
        status = fields.get(b"st", b"open").decode()
        expires_at = int(fields.get(b"x", b"0")) / 1000
        ok, outcome = False, ""
        if b"o" in fields:
            outcome_raw = self._open(b"outcome", entry_id, fields[b"o"])
            if outcome_raw is not None:
                ok, outcome = json.loads(outcome_raw)
        entry = Entry(
            entry_id=entry_id,
            service_id=meta["s"],
            credential_type=meta["t"],
            caller=meta["c"],
            flow=meta["f"],
            expires_at=expires_at,
            account=meta.get("a", ""),
            status=status if status in ("open", "submitted", "taken", "finished") else "finished",  # type: ignore[arg-type]
            ok=bool(ok),
            outcome=str(outcome),
        )
        if entry.status != "finished" and entry.remaining() <= 0:
            entry = replace(entry, status="finished", ok=False, outcome=EXPIRED)
        return entry

    # -- PendingStore ----------------------------------------------------------------------------

    async def put(self, entry: Entry, token: str) -> None:
        meta = json.dumps(
            {
                "s": entry.service_id,
                "t": entry.credential_type,
                "c": entry.caller,
                "f": entry.flow,
                "a": entry.account,
            },
            separators=(",", ":"),
        ).encode()
        ref = token_ref(token)
        caller_ref = _hash("caller", entry.caller)
        with self._failing("record a new secure-input request"):
            answer = await self._put(
                keys=[
                    self._key("e", entry.entry_id),
                    self._key("t", ref),
                    self._prefix + "open",
                    self._key("open", caller_ref),
                ],
                args=[
                    _ms(time.time()),
                    _ms(entry.expires_at),
                    _ms(entry.expires_at + FINISHED_GRACE),
                    self._max_total,
                    self._max_per_caller,
                    entry.entry_id,
                    ref,
                    caller_ref,
                    self._seal(b"meta", entry.entry_id, meta),
                    entry.flow,
                ],
            )
        if answer == -1:
            raise TooManyPending("too many secure-input requests are open on this server")
        if answer == -2:
            raise TooManyPending("too many secure-input requests are open for this caller")
        if answer != 1:
            raise StoreUnavailable("the shared state store refused a new entry (its id already exists)")

    async def get(self, entry_id: str) -> Entry | None:
        with self._failing("read a secure-input request"):
            fields = await self._redis.hgetall(self._key("e", entry_id))
        return self._entry(entry_id, fields)

    async def by_token(self, token: str) -> Entry | None:
        with self._failing("look up a secure-input link"):
            found = await self._redis.get(self._key("t", token_ref(token)))
        return None if found is None else await self.get(found.decode())

    async def submit(self, entry_id: str, value: str) -> bool:
        sealed = self._seal(b"value", entry_id, value.encode())
        with self._failing("record the entered value"):
            answer = await self._submit(
                keys=[self._key("e", entry_id), self._key("v", entry_id)],
                args=[
                    _ms(time.time()),
                    sealed,
                    _ms(LINK_SUBMIT_GRACE),
                    _ms(FINISHED_GRACE),
                    self._prefix,
                    entry_id,
                ],
            )
        return bool(answer == 1)

    async def _status(self, entry_id: str) -> tuple[str | None, float]:
        with self._failing("check a secure-input request"):
            status, expires = await self._redis.hmget(self._key("e", entry_id), "st", "x")
        return (status.decode() if status else None), (int(expires) / 1000 if expires else 0.0)

    async def _poll(self, deadline: float, done: Any) -> None:
        delay = POLL_FIRST
        while not await done():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await anyio.sleep(min(delay, left))
            delay = min(delay * 1.5, POLL_MAX)

    async def wait_submitted(self, entry_id: str, seconds: float) -> bool:
        status, expires = await self._status(entry_id)
        if status is None:
            return False
        deadline = time.monotonic() + max(0.0, min(seconds, expires - time.time()))
        seen: list[str | None] = [status]

        async def done() -> bool:
            if seen[0] == "open":
                seen[0], _ = await self._status(entry_id)
            return seen[0] != "open"

        await self._poll(deadline, done)
        return seen[0] == "submitted" and expires > time.time()

    async def take_value(self, entry_id: str) -> str | None:
        with self._failing("hand over the entered value"):
            sealed = await self._take(
                keys=[self._key("e", entry_id), self._key("v", entry_id)], args=[_ms(time.time())]
            )
        if sealed is None:
            return None
        value = self._open(b"value", entry_id, sealed)
        return None if value is None else value.decode()

    async def finish(self, entry_id: str, ok: bool, outcome: str) -> None:
        await self._close(entry_id, ok, outcome, only_untaken=False)

    async def _close(self, entry_id: str, ok: bool, outcome: str, *, only_untaken: bool) -> None:
        sealed = self._seal(b"outcome", entry_id, json.dumps([ok, outcome]).encode())
        with self._failing("record the outcome"):
            await self._finish(
                keys=[self._key("e", entry_id), self._key("v", entry_id), self._prefix + "open"],
                args=[sealed, _ms(FINISHED_GRACE), self._prefix, entry_id, "1" if only_untaken else "0"],
            )

    async def wait_finished(self, entry_id: str, seconds: float) -> Entry | None:
        found: list[Entry | None] = [await self.get(entry_id)]
        if found[0] is None:
            return None
        deadline = time.monotonic() + seconds

        async def done() -> bool:
            if found[0] is not None and found[0].status != "finished":
                found[0] = await self.get(entry_id)
            return found[0] is None or found[0].status == "finished"

        await self._poll(deadline, done)
        entry = found[0]
        return entry if entry is not None and entry.status == "finished" else None

    async def discard(self, entry_id: str, outcome: str) -> None:
        await self._close(entry_id, False, outcome, only_untaken=True)

    async def claim(self, mark: str, ttl: float) -> bool:
        with self._failing("record a single-use mark"):
            answer = await self._redis.set(
                self._key("m", _hash("mark", mark)), b"1", nx=True, px=_ms(max(ttl, 1.0))
            )
        return bool(answer)

    async def set_link(self, name: str, entry_id: str, ttl: float) -> None:
        with self._failing("remember a secure-input link"):
            await self._redis.set(self._key("l", name), entry_id.encode(), px=_ms(max(ttl, 1.0)))

    async def get_link(self, name: str) -> str | None:
        with self._failing("look up a pending secure-input link"):
            found = await self._redis.get(self._key("l", name))
        return None if found is None else str(found.decode())

    async def clear_link(self, name: str, entry_id: str) -> None:
        with self._failing("forget a secure-input link"):
            await self._clear_link(keys=[self._key("l", name)], args=[entry_id])

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._redis.aclose()
