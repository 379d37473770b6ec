"""A real browser on the secure input page: headless Chromium (Debian's package) driven by Playwright.

It renders, the field is a password field, submission works, and screenshots of the form and the
result are written to ``tests/artifacts/`` (``python -m pytest -m browser`` runs just this).
``.ci/run`` installs Chromium; elsewhere the test is skipped when no Chromium is found.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import types

from procs import MODERN
from test_secure_input import ARGS, VALUE, Tap, stdio_session, stored_value

pytestmark = [pytest.mark.anyio, pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run should have installed it")
        pytest.skip("no Chromium installed (apt-get install chromium)")
    return path


@pytest.mark.parametrize("flow", ["2025", "2026", "link"])
async def test_the_page_in_headless_chromium(tmp_path: Path, flow: str) -> None:
    """Each flow end to end with a real browser typing the value: the 2025 live elicitation, the
    2026 multi-round-trip, and the link a model shows to a user whose client cannot elicit."""
    executable = chromium_path()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed")
    ARTIFACTS.mkdir(exist_ok=True)
    seen: list[types.ElicitRequestURLParams] = []
    facts: dict[str, Any] = {}
    done_title = "Received" if flow == "link" else "Stored"
    browsed = anyio.Event()

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        try:

            async def type_it_in(url: str) -> None:
                page = await browser.new_page(viewport={"width": 720, "height": 560})
                await page.goto(url)
                field = page.locator("#credential_value")
                facts["type"] = await field.get_attribute("type")
                facts["title"] = await page.title()
                await page.screenshot(path=str(ARTIFACTS / f"secure-input-{flow}-form.png"))
                await field.fill(VALUE)
                await page.click("button[type=submit]")
                await page.wait_for_selector(f"h1:text('{done_title}')", timeout=20_000)
                facts["result"] = await page.inner_text("body")
                await page.screenshot(path=str(ARTIFACTS / f"secure-input-{flow}-done.png"))
                again = await page.goto(url)  # the link is spent
                facts["again"] = again.status if again else None
                facts["again_text"] = await page.inner_text("body")
                await page.close()
                browsed.set()

            async def handler(params: types.ElicitRequestURLParams) -> types.ElicitResult:
                tg.start_soon(type_it_in, params.url)
                return types.ElicitResult(action="accept")

            mode = MODERN if flow == "2026" else "legacy"
            async with anyio.create_task_group() as tg:
                async with stdio_session(
                    tmp_path, None if flow == "link" else handler, seen, Tap(), mode=mode
                ) as (client, err):
                    result = await client.call_tool("store_credential", ARGS)
                    if flow == "link":
                        assert result.structured_content is not None
                        await type_it_in(result.structured_content["input_url"])
                        result = await client.call_tool("store_credential", ARGS)
                    with anyio.fail_after(30):
                        await browsed.wait()  # the server (and its page) must outlive the browser
                    stderr = err.text()
        finally:
            await browser.close()

    assert result.is_error is False, result
    assert result.structured_content is not None and result.structured_content["success"] is True
    assert facts["type"] == "password"
    assert "Enter credential" in facts["title"]
    assert VALUE not in facts["result"]
    assert facts["again"] == 410 and "no longer valid" in facts["again_text"]
    assert (ARTIFACTS / f"secure-input-{flow}-form.png").stat().st_size > 1000
    assert stored_value(tmp_path / "s.db") == VALUE
    assert VALUE not in stderr
