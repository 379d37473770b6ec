"""Sandbox start-up errors: their messages are fit to show the user as-is (and never contain a key)."""


class SandboxError(Exception):
    """A sandbox start-up problem with a message fit to show the user as-is."""


class SandboxKeyError(SandboxError):
    """The encryption key is malformed, missing, or not the key this database was created with."""


class SandboxStoreError(SandboxError):
    """The database cannot be opened or is not a sandbox database."""


class SandboxFileError(SandboxStoreError):
    """A sandbox file or folder is unusable or unsafe (foreign owner, open mode, symlink, I/O error)."""


class SandboxIntegrityError(SandboxError):
    """A stored row failed authentication: its ciphertext or a metadata column changed outside the sandbox."""
