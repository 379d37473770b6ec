"""The network checks of ``danube-mcp --self-test``, each step a call takes, one report line each:

    address → name resolution → TCP connect → TLS → answers like Danube → the API key

A line says OK only for what was verified, FAILED with the reason, or NOT CHECKED with the reason
(an earlier step failed, or the step does not apply). The key is sent only in a read-only request
(``GET /v1/api-keys``), only to an address that answered like Danube, never across a redirect.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from danube_mcp.config import Settings
from danube_mcp.danube.redact import key_tail

STEP_TIMEOUT: Final = 10.0  # at most, per network step
KEYS_PATH: Final = "/v1/api-keys"
LABEL: Final = 19

OK, FAILED, NOT_CHECKED = "OK", "FAILED", "NOT CHECKED"


def report_line(label: str, text: str) -> str:
    return f"{label + ':':<{LABEL}}{text}"


@dataclass
class Check:
    name: str
    status: str
    why: str
    applies: bool = True  # False: does not apply here (TLS on plain http), not counted

    def line(self) -> str:
        return report_line(self.name, f"{self.status} ({self.why})" if self.why else self.status)


class Report:
    """Prints each line as soon as it is known, with the key scrubbed from it for good measure."""

    def __init__(self, secret: str | None) -> None:
        self.secret = secret
        self.checks: list[Check] = []

    def say(self, text: str) -> None:
        if self.secret:
            text = text.replace(self.secret, "****")
        print(text, flush=True)

    def add(self, name: str, status: str, why: str = "", *, applies: bool = True) -> Check:
        check = Check(name, status, why, applies)
        self.checks.append(check)
        self.say(check.line())
        return check

    def skip(self, names: list[str], why: str, key_problem: str | None = None) -> None:
        for name in names:
            if name == "API key" and key_problem:  # known without any network
                self.add(name, FAILED, f"DANUBE_API_KEY is {key_problem}")
            else:
                self.add(name, NOT_CHECKED, why)

    def passed(self) -> bool:
        return all(c.status == OK for c in self.checks if c.applies)


# --------------------------------------------------------------------------------------------
# Network steps


def _with_deadline(fn: Callable[[], Any], seconds: float) -> Any:
    """Run ``fn`` in a daemon thread (name resolution has no timeout of its own)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name="danube-mcp-selftest", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return box["value"]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _resolve(report: Report, host: str, port: int, timeout: float) -> list[Any] | None:
    name = "name resolution"
    try:
        infos: list[Any] = _with_deadline(
            lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
        )
    except TimeoutError:
        report.add(name, FAILED, f"no answer for {host} within {timeout:g} s; check DNS or the network")
        return None
    except OSError as exc:
        report.add(name, FAILED, f"{host} does not resolve ({exc.strerror or type(exc).__name__})")
        return None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if _is_ip(host):
        report.add(name, NOT_CHECKED, f"{host} is an IP address, nothing to resolve", applies=False)
    else:
        more = f" and {len(addresses) - 1} more" if len(addresses) > 1 else ""
        report.add(name, OK, f"{host} -> {addresses[0]}{more}")
    return infos


def _connect(report: Report, infos: list[Any], port: int, timeout: float) -> socket.socket | None:
    name = "TCP connect"
    problems: list[str] = []
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        started = time.monotonic()
        try:
            sock.connect(address)
        except TimeoutError:
            problems.append(f"{_hostport(address[0], port)}: no answer within {timeout:g} s")
        except OSError as exc:
            reason = (exc.strerror or type(exc).__name__).lower()
            problems.append(f"{_hostport(address[0], port)}: {reason}")
        else:
            ms = (time.monotonic() - started) * 1000
            report.add(name, OK, f"{_hostport(address[0], port)} in {ms:.0f} ms")
            return sock
        sock.close()
    report.add(
        name, FAILED, "; ".join(dict.fromkeys(problems)) + "; is the address right and the service up?"
    )
    return None


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tls(report: Report, sock: socket.socket, host: str, context: ssl.SSLContext) -> bool:
    name = "TLS"
    try:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            version = tls.version() or "TLS"
    except ssl.SSLCertVerificationError as exc:
        report.add(name, FAILED, f"certificate not accepted for {host}: {exc.verify_message}")
        return False
    except TimeoutError:
        report.add(name, FAILED, "no handshake answer in time")
        return False
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        report.add(name, FAILED, f"handshake failed ({reason}); is this an https:// address?")
        return False
    report.add(name, OK, f"{version}, certificate valid for {host}")
    return True


def _json_object(response: Any) -> dict[str, Any] | None:
    try:
        data = json.loads(response.content)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _looks_like_danube(report: Report, client: Any, url: str) -> str:
    """Returns "yes", "no", or "no-keys" (JSON errors, but no key listing to check against)."""
    name = "Danube answers"
    try:
        response = client.get(url + KEYS_PATH)
    except Exception as exc:  # report, never a traceback; httpx2 messages carry no secret here
        report.add(name, FAILED, f"GET {KEYS_PATH} failed ({type(exc).__name__})")
        return "no"
    status = response.status_code
    ctype = response.headers.get("content-type", "").split(";")[0].strip() or "no content type"
    body = _json_object(response)
    if 300 <= status < 400:
        report.add(
            name, FAILED, f"GET {KEYS_PATH} redirects ({status}); set DANUBE_API_URL to the API's own address"
        )
        return "no"
    if body is None:
        what = "an HTML page" if "html" in ctype else f"a non-JSON answer ({ctype})"
        report.add(
            name,
            FAILED,
            f"GET {KEYS_PATH} without a key got {what} with status {status}; "
            "this does not look like the Danube API: check DANUBE_API_URL",
        )
        return "no"
    if status in (401, 403):
        report.add(name, OK, f"GET {KEYS_PATH} without a key: {status} with a JSON error")
        return "yes"
    if status == 404:
        report.add(name, OK, f"JSON errors, but GET {KEYS_PATH} is 404 here")
        return "no-keys"
    if status < 300:
        report.add(name, FAILED, f"GET {KEYS_PATH} succeeded without a key ({status}); Danube refuses that")
        return "no"
    report.add(name, FAILED, f"GET {KEYS_PATH} without a key: status {status}")
    return "no"


def _check_key(report: Report, client: Any, settings: Settings, key: str) -> None:
    name = "API key"
    shown = f"****{key_tail(key) or ''}"
    headers = {"danube-api-key": key}
    if settings.org_id:
        headers["danube-org-id"] = settings.org_id
    try:
        response = client.get(settings.api_url + KEYS_PATH, headers=headers)
    except Exception as exc:  # report, never a traceback
        report.add(name, FAILED, f"GET {KEYS_PATH} failed ({type(exc).__name__})")
        return
    status = response.status_code
    if 200 <= status < 300:
        report.add(name, OK, f"{shown} accepted by a read-only GET {KEYS_PATH}")
    elif status == 401:
        report.add(
            name, FAILED, f"{shown} refused (401): wrong or revoked; copy the key again from the dashboard"
        )
    elif status == 403:
        report.add(
            name,
            FAILED,
            f"{shown} refused (403): not allowed for this account; check the key and DANUBE_ORG_ID",
        )
    elif status == 429:
        report.add(name, NOT_CHECKED, "rate limited (429); try again in a minute")
    else:
        report.add(name, FAILED, f"GET {KEYS_PATH} with the key: status {status}")


def check_danube(report: Report, settings: Settings, key: str | None) -> None:
    timeout = min(settings.timeout, STEP_TIMEOUT)
    parts = urlsplit(settings.api_url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    report.add("address", OK, f"{settings.api_url}: scheme, host and port valid, no path")
    later = ["TCP connect", "TLS", "Danube answers", "API key"]
    key_problem = None if key else settings.api_key_problem or "not set"
    infos = _resolve(report, host, port, timeout)
    if infos is None:
        report.skip(later, "name resolution failed", key_problem)
        return
    sock = _connect(report, infos, port, timeout)
    if sock is None:
        report.skip(later[1:], "no connection", key_problem)
        return
    context: ssl.SSLContext | None = None
    if https:
        import httpx2

        context = httpx2.create_ssl_context()  # the trust roots the server itself uses
        if not _tls(report, sock, host, context):
            report.skip(later[2:], "TLS failed", key_problem)
            return
    else:
        sock.close()
        report.add("TLS", NOT_CHECKED, "plain http:// (allowed for loopback only): no TLS", applies=False)

    import httpx2

    with httpx2.Client(
        verify=context if context is not None else True,
        trust_env=False,  # as the server's own client: no proxies from the environment
        follow_redirects=False,  # the key never travels to another address
        timeout=httpx2.Timeout(timeout),
    ) as client:
        like = _looks_like_danube(report, client, settings.api_url)
        if key is None:
            report.add("API key", FAILED, f"DANUBE_API_KEY is {key_problem}")
        elif like == "no":
            report.add(
                "API key", NOT_CHECKED, "the address does not answer like Danube, so the key was not sent"
            )
        elif like == "no-keys":
            report.add("API key", NOT_CHECKED, f"this deployment has no {KEYS_PATH} to check a key against")
        else:
            _check_key(report, client, settings, key)
