"""Private files for the sandbox: its database, the database's key file and an API-keys file.

Another local user must not be able to plant or read any of them (issue 12, item 8), so every file is:
owned by the current user, not readable or writable by group or others, a regular file, and never
reached through a symbolic link (``lstat`` first for a clear message, then ``O_NOFOLLOW`` and
``fstat`` on the opened descriptor, so a swap between the check and the open is caught too). Missing
folders are created with mode 0700 and files with mode 0600. Every refusal names the path and the
real cause (a read-only file system, a permission problem, a parent that is a file), never just
"No such file or directory".

On systems without POSIX ownership (Windows) the ownership and mode rules are skipped.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Final

from danube_mcp.sandbox.errors import SandboxFileError

POSIX: Final = os.name == "posix"
O_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
O_NOCTTY: Final = getattr(os, "O_NOCTTY", 0)
_GROUP_OTHER_BITS: Final = 0o077
_SYMLINK_ERRNOS: Final = frozenset({errno.ELOOP, getattr(errno, "EMLINK", errno.ELOOP)})


def _uid() -> int:
    return os.geteuid() if POSIX else -1


def os_cause(exc: OSError) -> str:
    """What really went wrong, in words a person can act on (never the bare errno text alone)."""
    code = exc.errno
    if code == errno.EROFS:
        return "the file system is read-only (EROFS)"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied (EACCES): you may not write or enter that folder"
    if code == errno.ENOTDIR:
        return "a parent in the path is a file, not a folder (ENOTDIR)"
    if code == errno.ENOSPC:
        return "no space left on the device (ENOSPC)"
    if code == errno.EDQUOT:
        return "disk quota exceeded (EDQUOT)"
    if code in _SYMLINK_ERRNOS:
        return "it is a symbolic link, and the sandbox never follows links to its files (ELOOP)"
    if code == errno.EISDIR:
        return "it is a folder, not a file (EISDIR)"
    if code == errno.ENOENT:
        return "a folder in the path does not exist (ENOENT)"
    name = errno.errorcode.get(code or 0, "")
    return f"{exc.strerror or 'operating system error'}{f' ({name})' if name else ''}"


def _mode_text(mode: int) -> str:
    return f"{stat.S_IMODE(mode):04o}"


def check_private_stat(st: os.stat_result, path: str | Path, what: str) -> None:
    """Refuse anything but a regular file of ours that group and others cannot touch."""
    if stat.S_ISLNK(st.st_mode):
        raise SandboxFileError(
            f"{what} {path} is a symbolic link; the sandbox never follows links to its files:"
            " use the real path"
        )
    if not stat.S_ISREG(st.st_mode):
        raise SandboxFileError(f"{what} {path} is not a regular file")
    if not POSIX:
        return
    if st.st_uid != _uid():
        raise SandboxFileError(
            f"{what} {path} belongs to another user (uid {st.st_uid}, you are uid {_uid()}); refusing"
            " to use a file someone else could have planted or can read"
        )
    if st.st_mode & _GROUP_OTHER_BITS:
        raise SandboxFileError(
            f"{what} {path} is open to other users (mode {_mode_text(st.st_mode)}); run: chmod 600 {path}"
        )


def lstat_private(path: str | Path, what: str) -> os.stat_result | None:
    """The ``lstat`` of ``path`` when it exists and passes :func:`check_private_stat`; None if missing."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SandboxFileError(f"cannot check {what} {path}: {os_cause(exc)}") from None
    check_private_stat(st, path, what)
    return st


def open_private(path: str | Path, what: str, *, write: bool = False) -> int:
    """Open an existing private file without following links; the descriptor is checked with fstat."""
    lstat_private(path, what)  # a clear message for a link or a foreign file before anything else
    flags = (os.O_RDWR if write else os.O_RDONLY) | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        action = "open" if not write else "open for writing"
        raise SandboxFileError(f"cannot {action} {what} {path}: {os_cause(exc)}") from None
    try:
        check_private_stat(os.fstat(fd), path, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_private(path: str | Path, what: str) -> int:
    """Create a new file with mode exactly 0600 (O_EXCL, never through a link) and return its descriptor."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise SandboxFileError(
            f"cannot create {what} {path}: it appeared while the sandbox was starting"
        ) from None
    except OSError as exc:
        raise SandboxFileError(f"cannot create {what} {path}: {os_cause(exc)}") from None
    if POSIX:
        os.fchmod(fd, 0o600)  # the umask can only remove bits; pin exactly 0600
    return fd


def read_private_text(path: str | Path, what: str, *, max_bytes: int = 1 << 20) -> str:
    """The text of a private file (UTF-8), read through a checked descriptor."""
    fd = open_private(path, what)
    try:
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise SandboxFileError(f"cannot read {what} {path}: {os_cause(exc)}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise SandboxFileError(f"{what} {path} is larger than {max_bytes} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SandboxFileError(f"{what} {path} is not UTF-8 text") from None


def _check_folder(folder: Path, st: os.stat_result) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise SandboxFileError(f"sandbox folder {folder} is a file, not a folder")
    if not POSIX:
        return
    if st.st_uid not in (_uid(), 0):
        raise SandboxFileError(
            f"sandbox folder {folder} belongs to another user (uid {st.st_uid}); keep the sandbox"
            " database in a folder of your own"
        )
    # Group write is tolerated for one's own primary group (user private groups, umask 002, as on
    # Debian/Ubuntu), never for another group and never for others (a sticky /tmp included).
    if st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != os.getegid()):
        raise SandboxFileError(
            f"sandbox folder {folder} is writable by other users (mode {_mode_text(st.st_mode)}), who could"
            " plant the database's -wal, -shm or key file there; keep the database in a private folder"
            f" (or run: chmod go-w {folder})"
        )


def _stat_existing(folder: Path, path: Path) -> os.stat_result | None:
    """``stat`` of ``path``; None when it (or a parent, which may then be a file) does not exist."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise SandboxFileError(f"cannot create sandbox folder {folder}: {path}: {os_cause(exc)}") from None


def ensure_private_folder(folder: Path) -> None:
    """Make sure the folder that holds the database exists and only we can add files to it.

    Missing folders (and missing parents) are created with mode exactly 0700. An existing folder must
    belong to us (or root) and must not be writable by others (nor by a group other than our own
    primary group), since SQLite opens the database's ``-wal``/``-shm`` files by name in that folder.
    """
    missing: list[Path] = []
    current = folder
    st = _stat_existing(folder, current)
    while st is None:
        missing.append(current)
        if current.parent == current:
            raise SandboxFileError(f"cannot create sandbox folder {folder}: no existing parent folder")
        current = current.parent
        st = _stat_existing(folder, current)
    if not stat.S_ISDIR(st.st_mode):
        if current == folder:
            raise SandboxFileError(f"sandbox folder {folder} is a file, not a folder")
        raise SandboxFileError(f"cannot create sandbox folder {folder}: {current} is a file, not a folder")
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise SandboxFileError(f"cannot create sandbox folder {path}: {os_cause(exc)}") from None
        else:
            if POSIX:
                os.chmod(path, 0o700)  # exactly 0700, whatever the umask
    try:
        st = os.stat(folder)
    except OSError as exc:
        raise SandboxFileError(f"cannot use sandbox folder {folder}: {os_cause(exc)}") from None
    _check_folder(folder, st)
