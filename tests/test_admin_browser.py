"""/admin in a real headless Chromium: the team's figures as the API gives them, the analysts' rows
opening an operator's view, nothing overflowing sideways, and screenshots (wide, narrow, dark) for
docs/ and the README."""

from __future__ import annotations

import pytest

from service import keys
from service.app import create_app
from service.store import ingest as ingest_store
from tests.conftest import ROOT, SAMPLE_USERS, make_caller
from tests.test_browser import DARK, NARROW, browser, fits_and_shoot, require_browser, sign_in  # noqa: F401,F811
from tests.test_ingest import NOW, ingest_files, sample_files

DOCS = ROOT / "docs"


@pytest.fixture
async def team_site(aiohttp_server, settings):
    app = create_app(settings)
    server = await aiohttp_server(app)
    app[keys.CLOCK].fixed = NOW
    db = app[keys.DB]
    for name in SAMPLE_USERS:
        caller = await make_caller(db, f"{name}@example.com", name=name.title())
        report = await ingest_files(db, caller.user.id, sample_files(name))
        assert report.failed == 0, report.errors
    await ingest_store.rebuild_rollups(db)
    ops = await make_caller(db, "ops@example.com", name="Opal Operator")
    return server, ops


async def open_admin(browser, base: str, token: str, **context_options):
    context = await browser.new_context(**context_options)
    page = await context.new_page()
    await sign_in(page, base, token)
    await page.goto(f"{base}/admin?range=7d")
    return context, page


async def test_admin_page_in_a_real_browser(browser, team_site):  # noqa: F811
    server, ops = team_site
    base = str(server.make_url("")).rstrip("/")
    context, page = await open_admin(browser, base, ops.token, viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.reload()
    api = await page.evaluate("fetch('/api/admin/usage?range=7d').then(r => r.json())")
    cards = [t.strip() for t in await page.locator("ul[aria-label='Headline figures'] .stat-value").all_inner_texts()]
    assert cards[:4] == [str(api["kpis"]["active_analysts"]), "4", "13", "27"]
    day = page.locator("figure:has(#chart-analysts) g.day").last
    assert (await day.get_attribute("aria-label")).startswith("2026-11-21: 3")
    rows = page.locator("section[aria-labelledby='analysts-title'] tbody tr")
    assert await rows.count() == 4
    DOCS.mkdir(exist_ok=True)
    await page.screenshot(path=str(DOCS / "admin.png"), full_page=True)
    await page.locator("a", has_text="Alice").first.click()
    await page.wait_for_url(f"{base}/admin/analysts/**")
    assert "Operator's view, read-only" in await page.inner_text("main")
    assert errors == []
    await context.close()

    for name, options in (("admin-narrow.png", NARROW), ("admin-dark.png", DARK)):
        context, page = await open_admin(browser, base, ops.token, **options)
        await fits_and_shoot(page, DOCS / name)
        await context.close()


def test_admin_screenshots_are_committed_where_the_readme_shows_them():
    readme = (ROOT / "README.md").read_text()
    for name in ("admin.png", "admin-narrow.png", "admin-dark.png"):
        assert f"docs/{name}" in readme, name
        assert (DOCS / name).is_file() or pytest.skip("screenshots are written by the browser test")


_ = require_browser
