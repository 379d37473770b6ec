"""The API key stored by ``danube-mcp login``: where it lives, how it is written and read.

One small JSON file per user, ``credentials.json`` in the user's config folder:

* ``$XDG_CONFIG_HOME/danube-mcp`` when ``XDG_CONFIG_HOME`` is an absolute path (any platform);
* otherwise ``~/Library/Application Support/danube-mcp`` on macOS, ``%APPDATA%\\danube-mcp`` on
  Windows, ``~/.config/danube-mcp`` elsewhere.

The folder is 0700 and the file 0600. The file is written atomically: a new temporary file in the
same folder (created with ``O_EXCL | O_NOFOLLOW`` and mode 0600, so nobody can pre-create or
redirect it), flushed to disk, then renamed over the old one. A file that is not a regular file,
not owned by the user, or readable or writable by anyone else is refused, never used. On Windows
the per-user ``%APPDATA%`` folder's access rules stand in for the POSIX checks.

Error messages name the file and the problem, never its contents.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from danube_mcp import __version__

APP_FOLDER: Final = "danube-mcp"
FILE_NAME: Final = "credentials.json"
FORMAT_VERSION: Final = 1
MAX_FILE_BYTES: Final = 64 * 1024
_POSIX: Final = os.name == "posix"


class KeyFileError(Exception):
    """The stored key cannot be read or written. One line naming the file, never its contents."""


@dataclass(frozen=True)
class StoredKey:
    """What ``danube-mcp login`` recorded. ``repr`` never shows the key."""

    api_key: str = field(repr=False)
    api_url: str
    org_id: str | None
    path: Path


def config_dir(env: Mapping[str, str] | None = None, platform: str | None = None) -> Path | None:
    """The folder for the credentials file, or None when the environment names no home at all."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / APP_FOLDER
    if platform == "win32":
        appdata = env.get("APPDATA", "")
        return Path(appdata) / APP_FOLDER if appdata else None
    home = env.get("HOME", "")
    if not home or not os.path.isabs(home):
        return None
    if platform == "darwin":
        return Path(home) / "Library" / "Application Support" / APP_FOLDER
    return Path(home) / ".config" / APP_FOLDER


def credentials_path(env: Mapping[str, str] | None = None, platform: str | None = None) -> Path | None:
    folder = config_dir(env, platform)
    return folder / FILE_NAME if folder is not None else None


# ------------------------------------------------------------------------------------------------
# Checks


def _check_owner_and_mode(st: os.stat_result, what: str, path: Path, *, allow_group_read: bool) -> None:
    if not _POSIX:
        return
    if st.st_uid != os.geteuid():
        raise KeyFileError(f"{what} {path} is not owned by you; remove it and run 'danube-mcp login' again")
    bad = 0o022 if allow_group_read else 0o077
    if st.st_mode & bad:
        fix = "chmod 700" if stat.S_ISDIR(st.st_mode) else "chmod 600"
        raise KeyFileError(
            f"{what} {path} can be read or changed by other users; run '{fix} {path}' "
            "(and consider revoking the key in the Danube dashboard), or run 'danube-mcp login' again"
        )


def check_folder(folder: Path) -> None:
    """The folder must be ours and not writable by others (or they could swap the file)."""
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise KeyFileError(
            f"cannot inspect the folder {folder}: {exc.strerror or type(exc).__name__}"
        ) from None
    if stat.S_ISLNK(st.st_mode):
        # A link to a folder is common (dotfile managers); judge the folder it leads to.
        try:
            st = os.stat(folder)
        except OSError:
            raise KeyFileError(f"the folder {folder} is a broken symbolic link") from None
    if not stat.S_ISDIR(st.st_mode):
        raise KeyFileError(f"{folder} is not a folder")
    _check_owner_and_mode(st, "the folder", folder, allow_group_read=True)


# ------------------------------------------------------------------------------------------------
# Reading


def load(path: Path) -> StoredKey | None:
    """The stored key, or None if there is no file. Raises :class:`KeyFileError` if it is unusable."""
    from danube_mcp.config import ConfigError, normalize_api_url

    check_folder(path.parent)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if os.path.islink(path):
            raise KeyFileError(
                f"{path} is a symbolic link; remove it and run 'danube-mcp login' again"
            ) from None
        raise KeyFileError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path} is not a regular file")
        _check_owner_and_mode(st, "the key file", path, allow_group_read=False)
        raw = f.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise KeyFileError(f"{path} is too large to be a danube-mcp key file")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise KeyFileError(f"{path} is not a valid danube-mcp key file; run 'danube-mcp login' again")
    if data.get("version") != FORMAT_VERSION:
        raise KeyFileError(f"{path} has an unknown format version; run 'danube-mcp login' again")
    key, url, org = data.get("api_key"), data.get("api_url"), data.get("org_id")
    if not isinstance(key, str) or not valid_key(key):
        raise KeyFileError(f"{path} holds no usable API key; run 'danube-mcp login' again")
    if not isinstance(url, str):
        raise KeyFileError(f"{path} has no API URL; run 'danube-mcp login' again")
    try:
        url = normalize_api_url(url, f"the API URL in {path}")
    except ConfigError as exc:
        raise KeyFileError(str(exc)) from None
    if org is not None and (not isinstance(org, str) or not valid_org(org)):
        raise KeyFileError(f"{path} has an invalid organisation id; run 'danube-mcp login' again")
    return StoredKey(api_key=key, api_url=url, org_id=org or None, path=path)


def valid_key(key: str) -> bool:
    """A key an HTTP header can carry: printable ASCII, no surrounding blanks. Shape is not checked
    (Danube keys are opaque)."""
    return bool(key) and key == key.strip() and key.isascii() and key.isprintable() and len(key) <= 4096


def valid_org(org: str) -> bool:
    return bool(org.strip()) and len(org) <= 256 and org.isascii() and org.isprintable()


# ------------------------------------------------------------------------------------------------
# Writing and removing


def _ensure_folder(folder: Path) -> None:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(
            f"cannot create the folder {folder}: {exc.strerror or type(exc).__name__}"
        ) from None
    check_folder(folder)
    if _POSIX:
        st = os.stat(folder)
        if st.st_mode & 0o077:
            # Ours (checked above) but group/other-readable, e.g. made by hand: tighten it.
            with contextlib.suppress(OSError):
                os.chmod(folder, 0o700)


def save(path: Path, *, api_key: str, api_url: str, org_id: str | None) -> None:
    """Write the key atomically to ``path`` (0600, in a 0700 folder)."""
    if not valid_key(api_key):
        raise KeyFileError("the API key Danube returned cannot be used in an HTTP header; nothing was saved")
    folder = path.parent
    _ensure_folder(folder)
    payload = json.dumps(
        {
            "version": FORMAT_VERSION,
            "api_key": api_key,
            "api_url": api_url,
            "org_id": org_id,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "created_by": f"danube-mcp {__version__} login",
        },
        indent=2,
    ).encode("utf-8")
    flags = (
        os.O_WRONLY
        | os.O_CREAT
        | os.O_EXCL
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_CLOEXEC", 0)
        | getattr(os, "O_BINARY", 0)
    )
    tmp = folder / f".{FILE_NAME}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    try:
        fd = os.open(tmp, flags, 0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot write in {folder}: {exc.strerror or type(exc).__name__}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if _POSIX:
                os.fchmod(f.fileno(), 0o600)  # whatever the umask did
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:  # Ctrl-C included: never leave a half-written temporary file
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise KeyFileError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None
        raise
    if _POSIX:
        _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove(path: Path) -> bool:
    """Delete the file. True if there was one."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise KeyFileError(f"cannot remove {path}: {exc.strerror or type(exc).__name__}") from None
    _fsync_folder(path.parent)
    return True


def describe(path: Path) -> str:
    """How the source of a stored key reads in a message."""
    return f"the key stored by 'danube-mcp login' ({path})"


def stored_settings(env: Mapping[str, str], env_url: str | None) -> tuple[StoredKey | None, str | None]:
    """For :func:`danube_mcp.config.load_settings`: the stored key to use, or why there is none.

    ``env_url`` is the API URL the environment sets (None when it sets none). The key is used only
    with the URL it was issued for: pointing ``DANUBE_API_URL`` elsewhere must not send it there.
    Returns ``(key, None)``, ``(None, problem)`` or ``(None, None)`` when nothing is stored.
    """
    path = credentials_path(env)
    if path is None:
        return None, None
    try:
        stored = load(path)
    except KeyFileError as exc:
        return None, f"the stored key cannot be used: {exc}"
    if stored is None:
        return None, None
    if env_url is not None and env_url != stored.api_url:
        return None, (
            f"the key in {path} was issued for {stored.api_url}, not for the "
            f"DANUBE_API_URL {env_url}; run 'danube-mcp login --api-url {env_url}' or unset DANUBE_API_URL"
        )
    return stored, None
