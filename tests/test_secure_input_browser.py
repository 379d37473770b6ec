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


async def test_the_page_in_headless_chromium(tmp_path: Path) -> None:
    executable = chromium_path()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed")
    ARTIFACTS.mkdir(exist_ok=True)
    seen: list[types.ElicitRequestURLParams] = []
    facts: dict[str, Any] = {}

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        try:

            async def type_it_in(url: str) -> None:
                page = await browser.new_page(viewport={"width": 720, "height": 560})
                await page.goto(url)
                field = page.locator("#credential_value")
                facts["type"] = await field.get_attribute("type")
                facts["title"] = await page.title()
                await page.screenshot(path=str(ARTIFACTS / "secure-input-form.png"))
                await field.fill(VALUE)
                await page.click("button[type=submit]")
                await page.wait_for_selector("h1:text('Stored')", timeout=20_000)
                facts["result"] = await page.inner_text("body")
                await page.screenshot(path=str(ARTIFACTS / "secure-input-stored.png"))
                await page.close()

            async def handler(params: types.ElicitRequestURLParams) -> types.ElicitResult:
                tg.start_soon(type_it_in, params.url)
                return types.ElicitResult(action="accept")

            async with anyio.create_task_group() as tg:
                async with stdio_session(tmp_path, handler, seen, Tap()) as (client, err):
                    result = await client.call_tool("store_credential", ARGS)
                    stderr = err.text()
        finally:
            await browser.close()

    assert result.is_error is False, result
    assert facts["type"] == "password"
    assert "Enter credential" in facts["title"]
    assert "stored" in facts["result"].lower() and VALUE not in facts["result"]
    assert (ARTIFACTS / "secure-input-form.png").stat().st_size > 1000
    assert stored_value(tmp_path / "s.db") == VALUE
    assert VALUE not in stderr
