"""The three ways a ``store_credential`` call without a value gets it from the user.

* **2026-07-28 (multi-round-trip).** The call answers ``input_required`` with a URL-mode
  ``ElicitRequest`` and a sealed ``requestState``; the client opens the page and retries; the
  retry stores the value the user typed. Until the value is there, a retry is answered with a
  fresh sealed state only, so the client waits and retries again.
* **2025-11-25 and earlier (initialize era).** A live ``elicitation/create`` in URL mode, then
  ``notifications/elicitation/complete``.
* **Hosts without URL elicitation** (not declared, declined, or a transport without a back-channel):
  a normal result asks the model to show the user a one-time link; the next call with the same
  ``service_id`` and ``credential_type`` and no value stores what the user entered and reports it.

Every flow uses one pending entry in the broker's store, bound to the caller (a hash of the
caller's access token and key), the service and the credential type. The value is taken from the
store exactly once, by the call that stores it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from danube_mcp.danube.models import StoreRequest
from danube_mcp.secure_input import SecureInputBroker
from danube_mcp.secure_input.state import StateError
from danube_mcp.secure_input.store import EXPIRED, LINK_SUBMIT_GRACE, Entry, StoreUnavailable, TooManyPending
from danube_mcp.tool.schema import credential_label

if TYPE_CHECKING:
    from danube_mcp.tool.handler import StoreCredentialTool

logger = logging.getLogger("danube_mcp.tool.secure_input")

# The key of our one input request inside ``inputRequests`` / ``inputResponses``.
INPUT_KEY: Final = "credential"
# How long one retry waits for the page before answering "still waiting" (a fresh state). The
# SDK clients retry up to ten rounds, so a round is at least a tenth of the link's lifetime.
MIN_ROUND_WAIT: Final = 1.0
# How long a link-flow check waits for a value that may be on its way from the page.
LINK_CHECK_WAIT: Final = 5.0
# How long a call waits for another call that took the same entry's value to report.
OTHER_CALL_WAIT: Final = 30.0
# Clean-up that must finish even when the call is cancelled, bounded so it can never hang.
SHIELD_LIMIT: Final = 5.0

START_OVER: Final = "Nothing was stored. Call store_credential again without credential_value to start over."
STORE_UNAVAILABLE: Final = (
    "danube-mcp could not reach its shared state store, so the secure input request could not "
    "continue. Nothing was stored; retrying is safe once the store is back."
)
Result = types.CallToolResult | types.InputRequiredResult


CANCELLED: Final = "This request was cancelled. Nothing was stored."


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Clean-up that runs even while the call is cancelled, bounded so it can never hang."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(SHIELD_LIMIT):
        yield


def is_modern(ctx: Any) -> bool:
    """True when the request speaks 2026-07-28 (per-request ``_meta``, no back-channel)."""
    return getattr(ctx, "protocol_version", None) in MODERN_PROTOCOL_VERSIONS


class UnidentifiedCaller(Exception):
    """An HTTP request reached the tool without the identity the HTTP app attaches."""


def caller_of(ctx: Any) -> str:
    """Who is calling, as an opaque string: over HTTP the app's identity of the caller (a salted
    hash of the access token and the caller's key), plus the legacy session when there is one, so
    two sessions that share credentials do not share pending links; over stdio the one local
    client. Fails closed: an HTTP request without an identity is refused, never merged."""
    request = getattr(ctx, "request", None)
    if request is None:
        return "local"
    scope = getattr(request, "scope", None)
    user = scope.get("user") if isinstance(scope, dict) else None
    identity = getattr(getattr(user, "access_token", None), "client_id", None)
    if not isinstance(identity, str) or not identity:
        raise UnidentifiedCaller
    session = None
    if not is_modern(ctx):
        # Streamable HTTP names its session in a header; legacy SSE posts to /messages/ with the
        # session in the query string (checked by the app: exactly one, a UUID in hex; the path is
        # transports.http.MESSAGES_PATH).
        session = request.headers.get("mcp-session-id")
        if session is None and isinstance(scope, dict) and scope.get("path") == "/messages/":
            session = request.query_params.get("session_id")
    return f"{identity}/{session}" if session else identity


def _declares_url_elicitation(ctx: Any) -> bool:
    session = getattr(ctx, "session", None)
    caps = getattr(session, "client_capabilities", None)
    elicitation = getattr(caps, "elicitation", None)
    return elicitation is not None and getattr(elicitation, "url", None) is not None


def _link_name(caller: str, service_id: str, credential_type: str) -> str:
    mac = hashlib.sha256()
    for part in (caller, service_id, credential_type):
        raw = part.encode()
        mac.update(len(raw).to_bytes(4, "big") + raw)
    return mac.hexdigest()


def _minutes(seconds: float) -> str:
    minutes = max(1, int(seconds // 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


class SecureInputFlows:
    """Chooses and runs the flow for one call without a value."""

    def __init__(self, tool: StoreCredentialTool, broker: SecureInputBroker) -> None:
        self.tool = tool
        self.broker = broker
        self.store = broker.store

    async def run(
        self, store: StoreRequest, key: str | None, ctx: Any, params: types.CallToolRequestParams
    ) -> Result:
        try:
            caller = caller_of(ctx)
        except UnidentifiedCaller:
            logger.error("secure input: an HTTP request without a caller identity reached the tool")
            return self.tool._error("Internal error in danube-mcp: the caller could not be identified.")
        try:
            modern = is_modern(ctx)
            if modern and params.request_state is not None:
                return await self._mrtr_retry(store, key, ctx, params, caller)
            pending = await self._pending_link(caller, store)
            if pending is not None:
                return await self._link_check(pending, store, key, caller)
            declares = _declares_url_elicitation(ctx)
            if modern and declares:
                return await self._mrtr_start(store, key, ctx, caller)
            if not modern and declares and self.tool.elicitation_possible and ctx is not None:
                return await self._elicit(store, key, ctx, caller)
            return await self._link_start(store, key, ctx, caller)
        except StoreUnavailable:
            logger.warning("secure input: the state store is unavailable")
            return self.tool._error(STORE_UNAVAILABLE)
        except TooManyPending as exc:
            return self.tool._error(
                f"Secure input refused: {exc}. Let the open links expire (at most "
                f"{_minutes(self.broker.ttl)}) or finish them, then try again."
            )

    # -- shared steps ----------------------------------------------------------------------------

    async def _open(self, store: StoreRequest, key: str | None, caller: str, flow: Any) -> tuple[Entry, str]:
        tail = self.tool.client.key_tail(key)
        account = f"the Danube account of the API key ending in ...{tail}" if tail else ""
        return await self.broker.open_entry(
            store.service_id, store.credential_type, caller=caller, flow=flow, account=account
        )

    async def _take_and_store(self, entry: Entry, key: str | None) -> types.CallToolResult:
        value = await self.store.take_value(entry.entry_id)
        if value is None:
            return await self._outcome_of_other_call(entry)
        request = StoreRequest(
            service_id=entry.service_id,
            credential_type=entry.credential_type,  # type: ignore[arg-type]
            credential_value=value,
        )
        outcome = "This request was cancelled while storing: the credential may or may not be stored."
        ok = False
        try:
            result, error_text = await self.tool._store(request, key, strict_fields=True)
            ok = error_text is None
            outcome = "The credential was stored." if ok else (error_text or "Danube did not store it.")
            return result
        finally:
            await self._settle(entry.entry_id, ok, outcome)

    async def _settle(self, entry_id: str, ok: bool, outcome: str, *, only_untaken: bool = False) -> None:
        """Close the entry even when this call is being cancelled; bounded, so it cannot hang.
        With ``only_untaken`` an entry whose value another call has taken is left to that call."""
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(SHIELD_LIMIT),
            contextlib.suppress(StoreUnavailable),
        ):
            if only_untaken:
                await self.store.discard(entry_id, outcome)
            else:
                await self.store.finish(entry_id, ok, outcome)

    async def _outcome_of_other_call(self, entry: Entry) -> types.CallToolResult:
        """The value was taken by another call (a concurrent retry or link check): report what
        that call did instead of claiming nothing was stored."""
        current = await self.store.get(entry.entry_id)
        if current is not None and current.status == "taken":
            current = await self.store.wait_finished(entry.entry_id, OTHER_CALL_WAIT) or current
        if current is not None and current.status == "finished" and current.ok:
            return self.tool._error(
                "Another call to store_credential already stored the credential entered on this "
                "link; nothing more to do. Do not start over."
            )
        if current is not None and current.status in ("finished", "taken"):
            return self.tool._error(
                "Another call to store_credential took the value entered on this link"
                + (f" and reported: {current.outcome}" if current.status == "finished" else ".")
                + " Do not start over unless that call failed."
            )
        return self.tool._error(f"The value entered on the page is no longer available. {START_OVER}")

    # -- 2026-07-28: multi-round-trip ----------------------------------------------------------

    def _seal(self, entry: Entry, phase: Any) -> str:
        return self.broker.sealer.seal(
            entry_id=entry.entry_id,
            service_id=entry.service_id,
            credential_type=entry.credential_type,
            caller=entry.caller,
            expires_at=entry.expires_at,
            phase=phase,
        )

    async def _mrtr_start(self, store: StoreRequest, key: str | None, ctx: Any, caller: str) -> Result:
        entry, token = await self._open(store, key, caller, "mrtr")
        url = await self.broker.url_for(token, getattr(ctx, "request", None))
        kind = credential_label(store.credential_type)
        ask = types.ElicitRequest(
            params=types.ElicitRequestURLParams(
                mode="url",
                url=url,
                message=(
                    f"Enter the {kind} for Danube service {store.service_id} on a private page. "
                    "It goes straight to danube-mcp; the assistant never sees it."
                ),
            )
        )
        state = self._seal(entry, "ask")
        return types.InputRequiredResult(input_requests={INPUT_KEY: ask}, request_state=state)

    async def _mrtr_retry(
        self, store: StoreRequest, key: str | None, ctx: Any, params: types.CallToolRequestParams, caller: str
    ) -> Result:
        error = self.tool._error
        try:
            state = self.broker.sealer.open(params.request_state or "")
        except StateError as exc:
            return error(f"Secure input: {exc}. {START_OVER}")
        if state.caller != caller:
            return error(f"Secure input: requestState belongs to another caller. {START_OVER}")
        if (state.service_id, state.credential_type) != (store.service_id, store.credential_type):
            return error(
                "Secure input: requestState was issued for a different service_id or credential_type. "
                + START_OVER
            )
        if not await self.store.claim(f"rs:{state.once}", state.expires_at - time.time()):
            return error(
                "Secure input: this requestState was already used by an earlier retry, which reports "
                "the outcome. Do not start over unless that retry failed."
            )
        entry = await self.store.get(state.entry_id)
        if entry is None or entry.status in ("finished", "taken") or entry.caller != caller:
            return error(f"Secure input: this request has expired or already ended. {START_OVER}")
        if state.phase == "ask":
            response = (params.input_responses or {}).get(INPUT_KEY)
            action = getattr(response, "action", None)
            if action is None:
                await self.store.discard(entry.entry_id, "The request ended without an answer.")
                return error(
                    "Secure input: the retry carried no answer to the input request "
                    f"'{INPUT_KEY}'. {START_OVER}"
                )
            if action == "cancel":
                await self.store.discard(entry.entry_id, "The request was cancelled. Nothing was stored.")
                return error(
                    "The user cancelled entering the credential. Nothing was stored; do not retry "
                    "unless the user asks to."
                )
            if action == "decline":
                await self.store.discard(entry.entry_id, "The request was declined. Nothing was stored.")
                return await self._link_start(store, key, ctx, caller, declined=True)
        wait = min(entry.remaining(), max(MIN_ROUND_WAIT, self.broker.ttl / 8))
        try:
            arrived = await self.store.wait_submitted(entry.entry_id, wait)
        except anyio.get_cancelled_exc_class():
            # The state is spent: close the entry so the page does not wait for a retry that
            # cannot come, and the value (if it arrives) is not kept.
            await self._settle(
                entry.entry_id, False, "The request was cancelled. Nothing was stored.", only_untaken=True
            )
            raise
        if not arrived:
            current = await self.store.get(entry.entry_id)
            if current is None or current.status != "open":
                return error(f"Secure input: the page expired before the value was entered. {START_OVER}")
            # Not entered yet: a state-only answer makes the client wait a moment and retry.
            return types.InputRequiredResult(request_state=self._seal(entry, "wait"))
        return await self._take_and_store(entry, key)

    # -- 2025-11-25: live URL elicitation ------------------------------------------------------

    async def _elicit(self, store: StoreRequest, key: str | None, ctx: Any, caller: str) -> Result:
        entry, token = await self._open(store, key, caller, "elicit")
        session = ctx.session
        try:
            url = await self.broker.url_for(token, getattr(ctx, "request", None))
            kind = credential_label(store.credential_type)
            answer = None
            with anyio.move_on_after(entry.remaining()):  # the link's lifetime bounds the wait
                answer = await session.elicit_url(
                    message=(
                        f"Enter the {kind} for Danube service {store.service_id} on a private page. "
                        "It goes straight to danube-mcp; the assistant never sees it."
                    ),
                    url=url,
                    elicitation_id=entry.entry_id,
                    related_request_id=ctx.request_id,
                )
            if answer is None:
                await self.store.discard(entry.entry_id, "This link expired. Nothing was stored.")
                return self.tool._error(
                    "The MCP client did not answer the secure input request before the link expired. "
                    + START_OVER
                )
            if answer.action == "cancel":
                await self.store.discard(entry.entry_id, "The request was cancelled in your MCP client.")
                return self.tool._error(
                    "The user cancelled entering the credential. Nothing was stored; do not retry "
                    "unless the user asks to."
                )
            if answer.action == "decline":
                await self.store.discard(entry.entry_id, "The request was declined in your MCP client.")
                return await self._link_start(store, key, ctx, caller, declined=True)
            if not await self.store.wait_submitted(entry.entry_id, entry.remaining()):
                await self.store.discard(entry.entry_id, "This link expired. Nothing was stored.")
                return self.tool._error(
                    "The secure input page expired before the credential was entered. " + START_OVER
                )
            result = await self._take_and_store(entry, key)
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(SHIELD_LIMIT),
                contextlib.suppress(Exception),
            ):
                await session.send_elicit_complete(entry.entry_id, related_request_id=ctx.request_id)
            return result
        except MCPError:
            await self.store.discard(entry.entry_id, "Your MCP client could not open this request.")
            return self.tool._error(
                "The MCP client could not open the secure input page. Ask the user for the credential "
                "and pass it as credential_value."
            )
        finally:  # a no-op once the store finished the entry
            await self._settle(
                entry.entry_id, False, "This request was cancelled. Nothing was stored.", only_untaken=True
            )

    # -- hosts without URL elicitation: a link for the model to show -------------------------

    async def _pending_link(self, caller: str, store: StoreRequest) -> Entry | None:
        name = _link_name(caller, store.service_id, store.credential_type)
        entry_id = await self.store.get_link(name)
        if entry_id is None:
            return None
        entry = await self.store.get(entry_id)
        if entry is None or entry.status not in ("open", "submitted", "taken") or entry.caller != caller:
            await self.store.clear_link(name, entry_id)
            return None
        return entry

    async def _link_start(
        self, store: StoreRequest, key: str | None, ctx: Any, caller: str, *, declined: bool = False
    ) -> Result:
        entry, token = await self._open(store, key, caller, "link")
        # The name outlives the link by the grace a typed value gets (the entry decides validity).
        name = _link_name(caller, store.service_id, store.credential_type)
        await self.store.set_link(name, entry.entry_id, self.broker.ttl + LINK_SUBMIT_GRACE)
        url = await self.broker.url_for(token, getattr(ctx, "request", None))
        kind = credential_label(store.credential_type)
        lead = (
            "The MCP client declined the in-app secure input request. If the user did not decline "
            "it on purpose, "
            if declined
            else "Secure input: "
        )
        text = (
            f"{lead}ask the user to open this one-time link and enter the {kind} for Danube "
            f"service {store.service_id} there (it goes straight to danube-mcp; you never see it):\n"
            f"{url}\n"
            f"The link works once and expires in {_minutes(entry.remaining())}. After the user says "
            "they have entered it, call store_credential again with the same service_id and "
            "credential_type and no credential_value: that call stores it and reports the outcome. "
            "Do not ask the user to paste the credential into the chat."
        )
        return self._awaiting(entry, text, url)

    def _awaiting(self, entry: Entry, text: str, url: str | None) -> types.CallToolResult:
        structured: dict[str, Any] = {
            "success": False,
            "status": "awaiting_user_input",
            "service_id": entry.service_id,
            "credential_type": entry.credential_type,
            "expires_in_seconds": int(entry.remaining()),
        }
        if url is not None:
            structured["input_url"] = url
        if self.tool.sandbox:
            structured["sandbox"] = True
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=self.tool._prefix + text)],
            structured_content=structured,
            is_error=False,
        )

    async def _link_check(self, entry: Entry, store: StoreRequest, key: str | None, caller: str) -> Result:
        if entry.status == "taken":  # another call of this caller is storing it right now
            return await self._outcome_of_other_call(entry)
        if entry.status == "open" and not await self.store.wait_submitted(
            entry.entry_id, min(LINK_CHECK_WAIT, entry.remaining())
        ):
            current = await self.store.get(entry.entry_id)
            if current is not None and current.status in ("taken", "finished") and current.outcome != EXPIRED:
                return await self._outcome_of_other_call(current)
            if current is None or current.status != "open":
                return self.tool._error(f"Secure input: the link expired before it was used. {START_OVER}")
            return self._awaiting(
                current,
                "The user has not entered the credential on the one-time link yet (it stays valid "
                f"for {_minutes(current.remaining())}). Ask them to open the link given earlier in "
                "this conversation and enter it there, then call store_credential again the same "
                "way. Do not ask the user to paste the credential into the chat.",
                None,
            )
        name = _link_name(caller, store.service_id, store.credential_type)
        await self.store.clear_link(name, entry.entry_id)
        return await self._take_and_store(entry, key)
