"""TLS trust roots, loaded in a background thread while the rest of the server starts.

Loading the CA bundle takes 25-60 ms, about a tenth of a cold start. OpenSSL releases the GIL
while it parses the bundle, so a thread started before the heavy imports finishes it for free on
the second core; the first call then finds it ready. Same trust roots as httpx2's default: the
operating system's store (through truststore), or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set,
which corporate TLS-intercepting proxies need.
"""

from __future__ import annotations

import ssl
import threading


class TrustRoots:
    """A default-verifying client SSL context, prepared off the main thread."""

    def __init__(self) -> None:
        self._context: ssl.SSLContext | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._load, name="danube-mcp-tls", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        try:
            import httpx2

            self._context = httpx2.create_ssl_context()
        except BaseException as exc:  # re-raised to the caller of context()
            self._error = exc

    def context(self) -> ssl.SSLContext:
        self._thread.join()
        if self._context is None:
            raise RuntimeError("could not load TLS trust roots") from self._error
        return self._context

    def __repr__(self) -> str:
        return f"TrustRoots(ready={self._context is not None})"


def prefetch_for(url: str) -> TrustRoots | None:
    """Start loading trust roots if ``url`` will need them."""
    return TrustRoots() if url.strip().lower().startswith("https://") else None
