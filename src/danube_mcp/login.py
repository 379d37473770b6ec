"""``danube-mcp login`` and ``danube-mcp logout``: get a Danube API key without pasting it anywhere.

Danube's device flow (RFC 8628): ask ``POST /v1/auth/device/code`` for a user code, show the person
the verification URL and the code, then poll ``POST /v1/auth/device/token`` no faster than the
interval Danube asked for (428 while pending, 200 with ``api_key`` once approved, 410 once expired;
the RFC's ``authorization_pending`` / ``slow_down`` / ``expired_token`` / ``access_denied`` error
codes are understood too). The key goes to the credentials file (see :mod:`danube_mcp.keyfile`),
never to stdout, a log line or an error message.

Everything this command says goes to stderr; stdout stays empty. Exit codes: 0 logged in (or
logged out), 1 the login failed (expired, denied, Danube unreachable or refusing), 2 usage or
configuration, 130 cancelled with Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import ssl
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from danube_mcp import __version__

DEVICE_CODE_PATH: Final = "/v1/auth/device/code"
DEVICE_TOKEN_PATH: Final = "/v1/auth/device/token"  # noqa: S105 (a path, not a secret)
CLIENT_NAME: Final = "danube-mcp"
DEFAULT_INTERVAL: Final = 5.0  # RFC 8628 section 3.2: when the server names none
MIN_INTERVAL: Final = 0.1
MAX_INTERVAL: Final = 60.0
SLOW_DOWN_STEP: Final = 5.0  # RFC 8628 section 3.5
DEFAULT_EXPIRES_IN: Final = 900.0
MAX_EXPIRES_IN: Final = 3600.0
MAX_TRANSIENT_FAILURES: Final = 5
MAX_BODY_BYTES: Final = 64 * 1024
HTTP_TIMEOUT: Final = 15.0

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130


class LoginFailed(Exception):
    """The device flow did not end with a key. The message is one line, for the person."""


@dataclass(frozen=True)
class DeviceCode:
    device_code: str = field(repr=False)
    user_code: str
    verification_url: str
    verification_url_complete: str | None
    expires_in: float
    interval: float


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _number(value: Any, default: float, lo: float, hi: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        return default
    return min(max(float(value), lo), hi)


def _error_code(data: Any) -> str | None:
    """The RFC 8628 / Danube error code of a body: ``{"error": "slow_down"}`` or the envelope."""
    if not isinstance(data, dict):
        return None
    err = data.get("error")
    if isinstance(err, str):
        return err
    if isinstance(err, dict) and isinstance(err.get("code"), str):
        return str(err["code"])
    detail = data.get("detail")
    if isinstance(detail, dict) and isinstance(detail.get("error"), str):
        return str(detail["error"])
    return None


def _error_message(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    for holder in (data.get("error"), data):
        if isinstance(holder, dict):
            for name in ("message", "error_description", "detail"):
                if isinstance(holder.get(name), str) and holder[name].strip():
                    return str(holder[name])
    return None


def _printable(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    line = "".join(ch if ch.isprintable() else "?" for ch in line)
    return line[:limit]


class DeviceFlow:
    """One device-flow login against ``api_url``. ``sleep`` and ``clock`` are injectable for tests."""

    def __init__(
        self,
        http: Any,  # an httpx2.Client
        api_url: str,
        *,
        org_id: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self.api_url = api_url.rstrip("/")
        self._headers = {
            "user-agent": f"danube-mcp/{__version__}",
            "accept": "application/json",
            "content-type": "application/json",
        }
        if org_id:
            self._headers["danube-org-id"] = org_id
        self._sleep = sleep
        self._clock = clock
        self._secrets: list[str] = []
        self.polls = 0
        self.waits: list[float] = []  # what was slept before each poll (for tests and curiosity)

    # -- HTTP ------------------------------------------------------------------------------------

    def _post(self, path: str, body: Mapping[str, str]) -> tuple[int, Any, Mapping[str, str]]:
        """POST JSON, read at most MAX_BODY_BYTES. Network failures raise httpx2.TransportError."""
        content = json.dumps(body, separators=(",", ":")).encode()
        with self._http.stream("POST", self.api_url + path, content=content, headers=self._headers) as resp:
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    chunks = []
                    break
                chunks.append(chunk)
            raw = b"".join(chunks)
            try:
                data = json.loads(raw) if raw.strip() else None
            except (ValueError, UnicodeDecodeError, RecursionError):
                data = None
            return resp.status_code, data, resp.headers

    def _clean(self, text: str) -> str:
        """Upstream text with every secret of this flow (device code, key) taken out."""
        from danube_mcp.danube.redact import Scrubber, clean_message

        return clean_message(text, Scrubber(self._secrets))

    def _refused(self, what: str, status: int, data: Any) -> LoginFailed:
        said = _error_message(data)
        detail = f": {self._clean(said)}" if said else ""
        hint = ""
        if status == 404:
            hint = " Check --api-url / DANUBE_API_URL: this server does not offer Danube's device login."
        return LoginFailed(f"Danube refused {what} (HTTP {status}){detail}.{hint}")

    # -- the flow --------------------------------------------------------------------------------

    def start(self) -> DeviceCode:
        import httpx2

        try:
            status, data, _ = self._post(DEVICE_CODE_PATH, {"client_name": CLIENT_NAME})
        except httpx2.TransportError as exc:
            raise LoginFailed(f"could not reach Danube at {self.api_url} ({type(exc).__name__})") from None
        if status != 200:
            raise self._refused("to start a login", status, data)
        if not isinstance(data, dict):
            raise LoginFailed(f"Danube's answer from {DEVICE_CODE_PATH} was not a JSON object")
        device_code = data.get("device_code")
        user_code = data.get("user_code")
        url = data.get("verification_url", data.get("verification_uri"))
        complete = data.get("verification_url_complete", data.get("verification_uri_complete"))
        if not isinstance(device_code, str) or not device_code:
            raise LoginFailed("Danube's answer had no device_code")
        self._secrets.append(device_code)
        if not isinstance(user_code, str) or not user_code.strip() or len(user_code) > 64:
            raise LoginFailed("Danube's answer had no usable user_code")
        if not isinstance(url, str) or not url.lower().startswith(("https://", "http://")) or len(url) > 2048:
            raise LoginFailed("Danube's answer had no usable verification_url")
        if not (isinstance(complete, str) and complete.lower().startswith(("https://", "http://"))):
            complete = None
        return DeviceCode(
            device_code=device_code,
            user_code=_printable(user_code, 64),
            verification_url=_printable(url, 2048),
            verification_url_complete=_printable(complete, 2048) if complete else None,
            expires_in=_number(data.get("expires_in"), DEFAULT_EXPIRES_IN, 1.0, MAX_EXPIRES_IN),
            interval=_number(data.get("interval"), DEFAULT_INTERVAL, MIN_INTERVAL, MAX_INTERVAL),
        )

    def wait_for_key(self, code: DeviceCode) -> str:
        """Poll until the person approves (the key), or raise :class:`LoginFailed`."""
        import httpx2

        deadline = self._clock() + code.expires_in
        interval = code.interval
        failures = 0
        expired = LoginFailed(
            "the code expired before it was approved; run 'danube-mcp login' again and approve "
            "it in the browser within the time shown"
        )
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise expired
            wait = min(interval, remaining)
            self.waits.append(wait)
            self._sleep(wait)
            if self._clock() >= deadline:
                raise expired
            self.polls += 1
            try:
                status, data, headers = self._post(DEVICE_TOKEN_PATH, {"device_code": code.device_code})
            except httpx2.TransportError as exc:
                failures += 1
                if failures >= MAX_TRANSIENT_FAILURES:
                    raise LoginFailed(
                        f"lost contact with Danube at {self.api_url} while waiting ({type(exc).__name__})"
                    ) from None
                continue
            err = _error_code(data)
            if status == 200 and err is None:
                key = data.get("api_key") if isinstance(data, dict) else None
                if not isinstance(key, str) or not key.strip():
                    raise LoginFailed("Danube approved the login but its answer held no api_key")
                self._secrets.append(key.strip())
                return key.strip()
            if status == 428 or err == "authorization_pending":
                failures = 0
                continue
            if status == 429 or err == "slow_down":
                interval = min(interval + SLOW_DOWN_STEP, MAX_INTERVAL + SLOW_DOWN_STEP)
                retry_after = headers.get("retry-after", "")
                with contextlib.suppress(ValueError):
                    interval = max(interval, min(float(retry_after), MAX_INTERVAL))
                continue
            if status == 410 or err == "expired_token":
                raise expired
            if err == "access_denied" or status == 403:
                raise LoginFailed("the login was denied in the browser; nothing was stored")
            if status >= 500:
                failures += 1
                if failures >= MAX_TRANSIENT_FAILURES:
                    raise self._refused("the login", status, data)
                continue
            raise self._refused("the login", status, data)


# ------------------------------------------------------------------------------------------------
# Commands


def _say(out: TextIO, text: str = "") -> None:
    print(text, file=out, flush=True)


def _http_client(api_url: str) -> Any:
    import httpx2

    from danube_mcp.danube.tls import prefetch_for

    roots = prefetch_for(api_url)
    # Plain http (loopback only, see config.normalize_api_url) needs no trust roots; a context
    # without any fails closed should TLS ever be attempted.
    verify = roots.context() if roots is not None else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return httpx2.Client(
        verify=verify,
        trust_env=False,
        follow_redirects=False,  # the device code and key never travel to another host
        timeout=httpx2.Timeout(HTTP_TIMEOUT, connect=min(HTTP_TIMEOUT, 10.0)),
    )


def build_login_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="danube-mcp login",
        description="Sign in to Danube in a browser and store an API key for danube-mcp in a file only "
        "you can read. The server uses it whenever DANUBE_API_KEY is not set. Messages go to stderr.",
    )
    p.add_argument("--org", metavar="ORG", default=None, help="organisation id to record (env DANUBE_ORG_ID)")
    p.add_argument(
        "--api-url",
        metavar="URL",
        default=None,
        help="Danube API base URL (env DANUBE_API_URL; default https://api.danubeai.com)",
    )
    return p


def login_main(argv: list[str], *, env: Mapping[str, str] | None = None, err: TextIO | None = None) -> int:
    from danube_mcp import keyfile
    from danube_mcp.config import DEFAULT_API_URL, ConfigError, normalize_api_url, parse_log_level
    from danube_mcp.logs import SECRETS, setup_logging

    env = os.environ if env is None else env
    out = err or sys.stderr
    args = build_login_parser().parse_args(argv)
    prog = "danube-mcp login"
    try:
        if args.api_url is not None:
            api_url = normalize_api_url(args.api_url, "--api-url")
        elif env.get("DANUBE_API_URL") is not None:
            api_url = normalize_api_url(env["DANUBE_API_URL"], "DANUBE_API_URL")
        elif env.get("DANUBE_BASE_URL") is not None:
            api_url = normalize_api_url(env["DANUBE_BASE_URL"], "DANUBE_BASE_URL")
        else:
            api_url = DEFAULT_API_URL
        log_level = parse_log_level(env.get("DANUBE_MCP_LOG_LEVEL"))
    except ConfigError as exc:
        _say(out, f"{prog}: {exc}")
        return EXIT_USAGE
    org = args.org if args.org is not None else (env.get("DANUBE_ORG_ID") or None)
    if org is not None:
        org = org.strip()
        if not keyfile.valid_org(org):
            var = "--org" if args.org is not None else "DANUBE_ORG_ID"
            _say(out, f"{prog}: {var} must be 1 to 256 printable ASCII characters")
            return EXIT_USAGE
    path = keyfile.credentials_path(env)
    if path is None:
        _say(out, f"{prog}: cannot tell where to store the key: set HOME (or XDG_CONFIG_HOME)")
        return EXIT_USAGE
    try:
        keyfile.check_folder(path.parent)  # before the person approves anything
    except keyfile.KeyFileError as exc:
        _say(out, f"{prog}: {exc}")
        return EXIT_USAGE

    setup_logging(log_level, stream=out)
    try:
        with _http_client(api_url) as http:
            flow = DeviceFlow(http, api_url, org_id=org)
            code = flow.start()
            SECRETS.add(code.device_code)
            minutes = max(1, round(code.expires_in / 60))
            _say(out, f"To sign in to Danube ({api_url}), open this page in a browser:")
            _say(out)
            _say(out, f"    {code.verification_url}")
            _say(out)
            _say(out, f"and enter this code:  {code.user_code}")
            if code.verification_url_complete:
                _say(out, f"(or open {code.verification_url_complete}, which fills the code in)")
            _say(out)
            _say(out, f"Waiting for approval (the code expires in {minutes} min; Ctrl-C to cancel)...")
            key = flow.wait_for_key(code)
            SECRETS.add(key)
        keyfile.save(path, api_key=key, api_url=api_url, org_id=org)
    except KeyboardInterrupt:
        _say(out)
        _say(out, f"{prog}: cancelled; nothing was stored")
        return EXIT_INTERRUPTED
    except LoginFailed as exc:
        _say(out, f"{prog}: {exc}")
        return EXIT_FAILED
    except keyfile.KeyFileError as exc:
        _say(out, f"{prog}: approved, but the key could not be saved: {exc}")
        return EXIT_FAILED
    except Exception as exc:  # one line, never a traceback
        import logging

        logging.getLogger("danube_mcp").debug("login failed unexpectedly", exc_info=True)
        _say(out, f"{prog}: unexpected error ({type(exc).__name__}); nothing was stored")
        return EXIT_FAILED
    org_text = f" for organisation {org}" if org else ""
    _say(out, f"Logged in{org_text}. The API key is stored in {path} (readable only by you).")
    _say(out, "danube-mcp uses it whenever DANUBE_API_KEY is not set; 'danube-mcp logout' removes it.")
    if env.get("DANUBE_API_KEY", "").strip():
        _say(out, "note: DANUBE_API_KEY is set in this shell and takes precedence over the stored key.")
    return EXIT_OK


def logout_main(argv: list[str], *, env: Mapping[str, str] | None = None, err: TextIO | None = None) -> int:
    from danube_mcp import keyfile

    out = err or sys.stderr
    p = _Parser(
        prog="danube-mcp logout",
        description="Remove the API key stored by 'danube-mcp login'. Messages go to stderr.",
    )
    p.parse_args(argv)
    path = keyfile.credentials_path(env)
    if path is None:
        _say(out, "danube-mcp logout: cannot tell where the key would be: set HOME (or XDG_CONFIG_HOME)")
        return EXIT_USAGE
    try:
        removed = keyfile.remove(path)
    except keyfile.KeyFileError as exc:
        _say(out, f"danube-mcp logout: {exc}")
        return EXIT_FAILED
    if not removed:
        _say(out, f"No stored key at {path}; nothing to remove.")
        return EXIT_OK
    _say(out, f"Removed the stored Danube API key ({path}).")
    _say(
        out,
        "The key itself stays valid at Danube until you revoke it (Danube dashboard, API keys); "
        "do that if it may have leaked.",
    )
    return EXIT_OK
