"""``danube-mcp store SERVICE_ID --type bearer|api_key``: store a credential from a terminal.

For people, not models: the value is typed at a hidden prompt (on the terminal, never echoed) or
piped in with ``--value-stdin``. It is never taken from the command line or the environment, where
it would end up in shell history, ``ps`` output or a host's config file.

The store goes through the same :class:`~danube_mcp.danube.client.DanubeClient` as the server
(same timeouts, retries, error mapping and scrubbing), or through the in-process sandbox with
``--sandbox``. Output: one line on stdout when stored (or one JSON object with ``--json``, success
or not); errors on stderr. Exit codes: 0 stored, 1 Danube refused or could not be reached, 2 usage
or configuration (no key, bad type, empty value), 130 cancelled with Ctrl-C.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Final, NoReturn, TextIO

from danube_mcp.tool.schema import CREDENTIAL_TYPES, MAX_CREDENTIAL_VALUE, credential_label

if TYPE_CHECKING:
    from danube_mcp.backend import Backend
    from danube_mcp.config import Settings
    from danube_mcp.tool.schema import StoreRequest, StoreResult

PROG: Final = "danube-mcp store"
EXIT_STORED: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130
# UTF-8 needs at most 4 bytes a character; one more line ending; one more byte to notice excess.
MAX_STDIN_BYTES: Final = MAX_CREDENTIAL_VALUE * 4 + 3

NO_ARGV_VALUE: Final = (
    "the credential value is never taken from the command line (it would stay in your shell history "
    "and be visible to other programs): type it at the hidden prompt, or pipe it in with --value-stdin"
)


class UsageError(Exception):
    """Bad arguments, configuration or input: exit 2. The message never holds the value."""

    def __init__(self, message: str, kind: str = "usage") -> None:
        super().__init__(message)
        self.kind = kind


class _Parser(argparse.ArgumentParser):
    """argparse quotes offending arguments in its errors; a misplaced secret must not be echoed."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments"):
            message = f"unexpected extra argument(s), not shown; {NO_ARGV_VALUE}"
        elif "--type" in message and "invalid choice" in message:
            message = "--type must be 'bearer' or 'api_key'"
        elif "invalid choice" in message:
            message = message.split(":", 1)[0] + ": invalid choice"
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Store a bearer token or API key for a Danube service. The value is typed at a hidden "
        "prompt, or read from standard input with --value-stdin; never from the command line. Uses "
        "DANUBE_API_KEY, or the key stored by 'danube-mcp login'.",
        epilog="Exit codes: 0 stored, 1 refused by Danube or Danube unreachable, 2 usage or "
        "configuration, 130 cancelled.",
    )
    p.add_argument("service_id", metavar="SERVICE_ID", help="the Danube service, e.g. svc_openai_001")
    p.add_argument(
        "--type",
        dest="credential_type",
        required=True,
        choices=CREDENTIAL_TYPES,
        help="bearer (a bearer token) or api_key (an API key)",
    )
    p.add_argument(
        "--value-stdin",
        action="store_true",
        help="read the value from standard input (one trailing newline is removed) instead of a prompt",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout, success or not")
    p.add_argument(
        "--sandbox",
        action="store_true",
        help="store in the local encrypted test database instead of Danube (no key needed)",
    )
    p.add_argument(
        "--sandbox-db",
        metavar="PATH",
        default=None,
        help="database file for --sandbox (env DANUBE_MCP_SANDBOX_DB)",
    )
    return p


# ------------------------------------------------------------------------------------------------
# Reading the value


def read_value_from_stdin(stream: IO[bytes], is_tty: bool) -> str:
    if is_tty:
        raise UsageError(
            "--value-stdin reads a pipe or a file, and standard input is a terminal (typing would be "
            "shown); leave --value-stdin out to get a hidden prompt"
        )
    raw = stream.read(MAX_STDIN_BYTES)
    if len(raw) >= MAX_STDIN_BYTES:
        raise UsageError(f"the value on standard input is longer than {MAX_CREDENTIAL_VALUE} characters")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("the value on standard input is not valid UTF-8") from None
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text:
        raise UsageError("standard input was empty; nothing was stored")
    return text


def read_value_from_terminal(service_id: str, credential_type: str) -> str:
    """A hidden prompt on the controlling terminal (getpass), never a silent echoing fallback."""
    if os.name == "posix":
        try:
            fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
        except OSError:
            raise UsageError(
                "no terminal to ask on; pipe the value in with --value-stdin", kind="usage"
            ) from None
        os.close(fd)
    label = credential_label(credential_type)
    prompt = f"{label[:1].upper()}{label[1:]} for {service_id} (typing is hidden): "
    with warnings.catch_warnings():
        # getpass falls back to an echoing read when it cannot hide input: refuse that instead.
        warnings.simplefilter("error", getpass.GetPassWarning)
        try:
            value = getpass.getpass(prompt)
        except getpass.GetPassWarning:
            raise UsageError(
                "cannot hide typing on this terminal; pipe the value in with --value-stdin"
            ) from None
        except EOFError:
            raise UsageError("no value was entered; nothing was stored") from None
    if not value:
        raise UsageError("no value was entered; nothing was stored")
    return value


# ------------------------------------------------------------------------------------------------
# Output


@dataclass
class _Reporter:
    json_mode: bool
    out: TextIO
    err: TextIO
    service_id: str | None = None
    credential_type: str | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def _guard(self, text: str) -> str:
        """Last line of defence: no secret of this run (of 8 characters or more) in any output."""
        from danube_mcp.danube.redact import Scrubber

        known = tuple(x for x in (self.service_id, self.credential_type) if x)
        return Scrubber(self.secrets, known=known).for_fields()(text)

    def success(self, data: dict[str, Any], line: str, notice: str | None) -> None:
        if self.json_mode:
            print(self._guard(json.dumps(data, ensure_ascii=False)), file=self.out, flush=True)
            return
        print(self._guard(line), file=self.out, flush=True)
        if notice:
            print(self._guard(f"note: {notice}"), file=self.err, flush=True)

    def failure(self, message: str, kind: str, status: int | None = None) -> None:
        if self.json_mode:
            data: dict[str, Any] = {"success": False}
            if self.service_id is not None:
                data["service_id"] = self.service_id
            if self.credential_type is not None:
                data["credential_type"] = self.credential_type
            data["error"] = message
            data["kind"] = kind
            if status is not None:
                data["status"] = status
            print(self._guard(json.dumps(data, ensure_ascii=False)), file=self.out, flush=True)
        else:
            print(self._guard(f"{PROG}: {message}"), file=self.err, flush=True)


def _success_line(result: StoreResult, sandbox: bool) -> str:
    label = credential_label(result.credential_type)
    what = f"a reference to the {label}" if result.stored_as == "reference" else f"the {label}"
    where = "in the local sandbox (not in Danube)" if sandbox else "in Danube"
    return f"Stored {what} for {result.service_name} ({result.service_id}) {where}."


def _cli_message(exc: Exception, key_source: str | None) -> str:
    """The client's message, reworded where it speaks to an MCP host rather than to a shell."""
    from danube_mcp.danube.errors import AuthenticationFailed

    if isinstance(exc, AuthenticationFailed):
        said = f": {exc.upstream_message}" if exc.upstream_message else ""
        source = f" (from {key_source})" if key_source else ""
        return (
            f"Danube rejected the API key{source} (HTTP 401){said}. The key is missing, wrong or "
            "revoked: run 'danube-mcp login' again, or set DANUBE_API_KEY to a valid key."
        )
    return str(exc)


# ------------------------------------------------------------------------------------------------
# The command


def store_main(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: IO[bytes] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    env = os.environ if env is None else env
    rep = _Reporter(json_mode="--json" in argv, out=stdout or sys.stdout, err=stderr or sys.stderr)
    try:
        return _run(argv, env, stdin, rep)
    except UsageError as exc:
        rep.failure(str(exc), exc.kind)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if not rep.json_mode:
            print(file=rep.err)
        rep.failure("cancelled; nothing was stored", "interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # one line, never a traceback (its text could quote anything)
        import logging

        logging.getLogger("danube_mcp").debug("store failed unexpectedly", exc_info=True)
        rep.failure(
            f"unexpected error ({type(exc).__name__}); the credential may or may not have been stored, "
            "and storing it again is safe",
            "internal",
        )
        return EXIT_REFUSED


def _run(argv: list[str], env: Mapping[str, str], stdin: IO[bytes] | None, rep: _Reporter) -> int:
    from danube_mcp.config import ConfigError, load_settings

    args = build_parser().parse_args(argv)
    rep.credential_type = args.credential_type
    _check_arguments(args.service_id, args.credential_type, None)  # before anyone types a secret
    rep.service_id = args.service_id.strip()  # only once valid, as JSON output may quote it
    sandbox_db = args.sandbox_db or env.get("DANUBE_MCP_SANDBOX_DB") or None
    if args.sandbox_db and not args.sandbox:
        raise UsageError("--sandbox-db only makes sense with --sandbox")
    try:
        settings = load_settings(env)
    except ConfigError as exc:
        raise UsageError(str(exc), kind="configuration") from None
    key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    if not args.sandbox and key is None:
        raise UsageError(
            f"no Danube API key: DANUBE_API_KEY is {settings.api_key_problem}. Run 'danube-mcp login', "
            "set DANUBE_API_KEY, or try --sandbox",
            kind="configuration",
        )

    from danube_mcp.logs import SECRETS, setup_logging

    setup_logging(settings.log_level, stream=rep.err)
    SECRETS.add(key)
    rep.secrets = (key,) if key else ()
    backend = _open(settings, args.sandbox, sandbox_db)  # a bad sandbox database fails before the prompt
    handed_over = False
    try:
        if args.value_stdin:
            stream = stdin if stdin is not None else sys.stdin.buffer
            value = read_value_from_stdin(stream, is_tty=stream.isatty())
        else:
            value = read_value_from_terminal(rep.service_id, args.credential_type)
        with SECRETS.holding(value):
            rep.secrets = (*rep.secrets, value)
            request = _check_arguments(args.service_id, args.credential_type, value)
            handed_over = True  # _store closes it, in the same event loop as the call
            return _store(backend, request, settings.api_key_source, args.sandbox, rep)
    finally:
        if not handed_over:
            _close(backend)


def _check_arguments(service_id: str, credential_type: str, value: str | None) -> StoreRequest:
    """The tool's own validation, worded for a shell. The value is never quoted."""
    from danube_mcp.tool.schema import ArgumentError, parse_arguments

    arguments = {"service_id": service_id, "credential_type": credential_type}
    if value is not None:
        arguments["credential_value"] = value
    try:
        return parse_arguments(arguments, value_optional=value is None)
    except ArgumentError as exc:
        text = str(exc).replace("credential_value: ", "the value ")
        raise UsageError(text.replace("ask the user to copy the credential again", "copy it again")) from None


def _open(settings: Settings, sandbox: bool, sandbox_db: str | None) -> Backend:
    from danube_mcp.backend import open_backend

    if not sandbox:
        return open_backend(settings)
    from danube_mcp.sandbox import SandboxError

    try:
        return open_backend(settings, sandbox=True, sandbox_db=sandbox_db)
    except SandboxError as exc:
        raise UsageError(str(exc), kind="configuration") from None


def _close(backend: Backend) -> None:
    import anyio

    anyio.run(backend.aclose)


def _store(
    backend: Backend, request: StoreRequest, key_source: str | None, sandbox: bool, rep: _Reporter
) -> int:
    import anyio

    from danube_mcp.danube.errors import DanubeError

    async def call() -> StoreResult:
        try:
            # strict_fields: a value typed by a person gets the full scrub in every field.
            return await backend.client.store_credential(request, strict_fields=True)
        finally:
            await backend.aclose()

    try:
        result = anyio.run(call)
    except DanubeError as exc:
        rep.failure(_cli_message(exc, key_source), exc.kind, exc.status)
        return EXIT_REFUSED
    rep.success(result.structured(sandbox=sandbox), _success_line(result, sandbox), result.notice)
    return EXIT_STORED
