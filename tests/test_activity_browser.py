"""/activity in a real headless Chromium: the browser's zone remembered, charts readable by keyboard,
the numbers equal the API's, and screenshots (wide, narrow, dark) for docs/ and the README."""

from __future__ import annotations

import pytest

from service.store import activity as activity_store
from tests.conftest import ROOT
from tests.test_browser import DARK, NARROW, browser, fits_and_shoot, sample_site, sign_in  # noqa: F401 (fixture)

DOCS = ROOT / "docs"


@pytest.fixture
async def carol_site(aiohttp_server, settings):
    return await sample_site(aiohttp_server, settings, "carol")


async def open_activity(browser, base: str, token: str, **context_options):
    context = await browser.new_context(**context_options)
    page = await context.new_page()
    await sign_in(page, base, token)
    return context, page


async def test_activity_page_in_a_real_browser(browser, carol_site):  # noqa: F811
    server, carol, db = carol_site
    base = str(server.make_url("")).rstrip("/")
    context, page = await open_activity(browser, base, carol.token, viewport={"width": 1280, "height": 900},
                                        timezone_id="Europe/Prague")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{base}/activity?range=7d")
    # No zone stored yet: the page's script stores the browser's, then shows the days in it.
    await page.wait_for_function("() => document.body.textContent.includes('Europe/Prague')")
    assert await activity_store.stored_zone(db, carol.user.id) == "Europe/Prague"
    api = await page.evaluate("fetch('/api/me/activity?range=7d').then(r => r.json())")
    assert api["tz"] == "Europe/Prague" and api["totals"]["prompts"] == 12
    cards = [t.strip() for t in await page.locator(".totals .stat-value").all_inner_texts()]
    assert cards[:3] == ["7", "12", "226k"]  # 225,900 tokens, abbreviated as on /home
    # Keyboard: each day of a chart is focusable and says its exact values.
    await page.locator("#chart-tokens").scroll_into_view_if_needed()
    day = page.locator("figure:has(#chart-tokens) g.day").last
    await day.focus()
    label = await day.get_attribute("aria-label")
    last = api["days"][-1]
    assert label.startswith(f"{last['date']}: {last['tokens']['total']:,}")
    assert f"input {last['tokens']['input']:,}" in label
    # The sessions table links to a session's page.
    rows = page.locator("section.sessions tbody tr")
    assert await rows.count() == 7
    DOCS.mkdir(exist_ok=True)
    await page.screenshot(path=str(DOCS / "activity.png"), full_page=True)
    await rows.first.locator("a").click()
    await page.wait_for_url(f"{base}/activity/sessions/**")
    assert "Tools, skills, subagents and commands" in await page.content()
    await page.screenshot(path=str(DOCS / "activity-session.png"), full_page=True)
    assert errors == []
    await context.close()

    for name, options in (("activity-narrow.png", NARROW), ("activity-dark.png", DARK)):
        context, page = await open_activity(browser, base, carol.token, timezone_id="Europe/Prague", **options)
        await page.goto(f"{base}/activity?range=7d")
        await fits_and_shoot(page, DOCS / name)
        await context.close()


async def test_home_cards_context_follows_the_toggle(browser, carol_site):  # noqa: F811
    server, carol, _ = carol_site
    base = str(server.make_url("")).rstrip("/")
    context, page = await open_activity(browser, base, carol.token, viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    sessions = page.locator('[data-context="sessions"] .delta')
    assert (await sessions.inner_text()).strip() == "▲ 200% vs the previous 24h"
    assert await page.locator('[data-context="sessions"] svg.spark rect').count() == 24
    await page.click("#tab-7d")
    await page.wait_for_function(
        "() => document.querySelector('[data-context=\"sessions\"] .delta').textContent.includes('7d')")
    assert await page.locator('[data-context="sessions"] svg.spark rect').count() == 7
    assert errors == []
    await context.close()


def test_screenshots_are_committed_where_the_readme_shows_them():
    readme = (ROOT / "README.md").read_text()
    for name in ("activity.png", "activity-narrow.png", "activity-dark.png"):
        assert f"docs/{name}" in readme, name
        assert (DOCS / name).is_file() or pytest.skip("screenshots are written by the browser test")

