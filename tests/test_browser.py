"""/home in a real headless Chromium: sign-in, server-rendered cards, the 7d toggle, failures, layout.

Uses Debian's /usr/bin/chromium (``make test`` installs it when it can) driven by
Playwright's Python package; no browser is ever downloaded. Without either, the test
is skipped with a reason that says so, never passed silently.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from service import keys
from service.app import create_app
from service.store import users
from service.web.filters import abbreviate, exact_note, grouped, reltime
from tests.conftest import ROOT, make_caller
from tests.test_home_page import ABBREVIATIONS, RELATIVE
from tests.test_ingest import EXPECTED, NOW, ingest_files, sample_files

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"
CARDS = ("sessions", "prompts", "projects")


def require_browser():
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("BROWSER TEST SKIPPED: the `playwright` Python package is not installed "
                    "(run `make install`); /home's JavaScript was NOT tested")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"BROWSER TEST SKIPPED: {CHROMIUM} is missing (`make test` installs Debian's chromium "
                    "when run as root with apt-get); /home's JavaScript was NOT tested")
    return async_playwright


@pytest.fixture
async def browser():
    async_playwright = require_browser()
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


NARROW = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
DARK = {"viewport": {"width": 1280, "height": 900}, "color_scheme": "dark"}


async def fits_and_shoot(page, path) -> None:
    """Nothing overflows the page sideways (wide tables scroll in their own wrapper); then a full-page
    screenshot at ``path``."""
    overflow = await page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    wide = await page.evaluate("""() => [...document.querySelectorAll('body *')].filter(e =>
        e.getBoundingClientRect().right > document.documentElement.clientWidth + 1).slice(0, 8).map(e =>
        e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))""")
    assert overflow <= 0, (str(path), wide)
    await page.screenshot(path=str(path), full_page=True)


async def sample_site(aiohttp_server, settings, name: str):
    """A real server on a socket, one analyst's samples ingested, its clock at NOW: (server, caller, db)."""
    app = create_app(settings)
    server = await aiohttp_server(app)
    app[keys.CLOCK].fixed = NOW
    db = app[keys.DB]
    caller = await make_caller(db, f"{name}@example.com", name=name.title())
    report = await ingest_files(db, caller.user.id, sample_files(name))
    assert report.failed == 0, report.errors
    return server, caller, db


@pytest.fixture
async def site(aiohttp_server, settings):
    """alice's samples, her last pull 3 minutes before now."""
    server, alice, db = await sample_site(aiohttp_server, settings, "alice")
    await users.stamp_pull(db, alice.user.id, NOW - timedelta(minutes=3))
    return server, alice


async def api_stats(page, window: str) -> dict:
    """The API's answer, fetched by the signed-in page itself (cookie session)."""
    return await page.evaluate(
        "w => fetch('/api/me/home-stats?window=' + w).then(r => r.json())", window)


async def card(page, field: str) -> tuple[str, str | None]:
    locator = page.locator(f'[data-field="{field}"]')
    return (await locator.inner_text()).strip(), await locator.get_attribute("title")


async def assert_cards_show(page, data: dict) -> None:
    for name in CARDS:
        assert await card(page, name) == (abbreviate(data[name]), grouped(data[name])), name
    assert await card(page, "tokens.total") == (abbreviate(data["tokens"]["total"]),
                                                grouped(data["tokens"]["total"]))
    # What a screen reader hears after each number: the exact value, when it was abbreviated.
    values = {**{name: data[name] for name in CARDS}, "tokens.total": data["tokens"]["total"]}
    for name, value in values.items():
        note = await page.locator(f'[data-exact="{name}"]').text_content()
        assert note == exact_note(value), name
    for key in ("input", "output", "cache_read", "cache_creation"):
        text = (await page.locator(f'[data-field="tokens.{key}"]').text_content()).strip()
        assert text == grouped(data["tokens"][key]), key
    # The split's first row: the exact total, for whoever cannot hover for the title.
    text = (await page.locator('[data-field="tokens.total.exact"]').text_content()).strip()
    assert text == grouped(data["tokens"]["total"])


SPLIT_OPEN = "() => getComputedStyle(document.getElementById('token-split')).opacity === '1'"


async def split_opacity(page) -> str:
    return await page.evaluate("getComputedStyle(document.getElementById('token-split')).opacity")


async def selected_tab(page) -> str:
    return await page.locator('[role=tab][aria-selected="true"]').inner_text()


async def sign_in(page, base: str, token: str) -> None:
    await page.goto(f"{base}/login")
    await page.fill("#token", token)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/home")


async def test_home_in_a_real_browser(browser, site):
    server, alice = site
    base = str(server.make_url("")).rstrip("/")
    ARTIFACTS.mkdir(exist_ok=True)
    context = await browser.new_context(viewport={"width": 1280, "height": 860}, device_scale_factor=1)
    page = await context.new_page()
    # A controllable clock (Date and timers) starting at the samples' "now", so ticking can be tested.
    await page.clock.install(time=NOW)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("response", lambda resp: errors.append(f"{resp.status} {resp.url}") if resp.status >= 400 else None)

    await sign_in(page, base, alice.token)

    # First paint: 24h, rendered by the server, equal to the API and to expected.json.
    day = await api_stats(page, "24h")
    assert day == {**EXPECTED["users"]["alice"]["24h"], "last_pull_at": "2026-11-21T11:57:00Z"}
    await assert_cards_show(page, day)
    assert await selected_tab(page) == "24h"
    assert await card(page, "tokens.total") == ("64.5k", "64,504")
    assert await card(page, "last_pull_at") == ("3m ago", "2026-11-21 11:57:00 UTC")

    # The token split opens on hover. Closed, it is see-through but still read by screen readers
    # (in the accessibility tree, exact total first).
    split = page.locator("#token-split")
    assert await split_opacity(page) == "0"
    tree = await split.aria_snapshot()
    assert tree.index("Total") < tree.index("64,504") < tree.index("Cache read") < tree.index("56,800"), tree
    await page.hover(".stat-tokens")
    await page.wait_for_function(SPLIT_OPEN)
    assert "Cache read" in await split.inner_text() and "56,800" in await split.inner_text()
    await page.screenshot(path=str(ARTIFACTS / "home.png"), full_page=True)

    # The toggle: fetch 7d, redraw in place (no navigation), move aria-selected, keep the URL honest.
    await page.mouse.move(0, 0)
    before = page.url
    await page.click("#tab-7d")
    await page.wait_for_selector('#tab-7d[aria-selected="true"]')
    week = await api_stats(page, "7d")
    assert week == {**EXPECTED["users"]["alice"]["7d"], "last_pull_at": "2026-11-21T11:57:00Z"}
    await assert_cards_show(page, week)
    assert await card(page, "tokens.total") == ("169k", "169,027")
    assert await page.get_attribute("#tab-24h", "aria-selected") == "false"
    assert await page.locator("[data-window-label]").inner_text() == "Last 7 days"
    assert page.url == f"{base}/home?window=7d" and before == f"{base}/home"
    await page.screenshot(path=str(ARTIFACTS / "home-7d.png"), full_page=True)

    # Keyboard: the focused card shows its split; arrows move between pills and load the window.
    assert await split_opacity(page) == "0"
    await page.focus(".stat-tokens")
    await page.wait_for_function(SPLIT_OPEN)
    await page.focus("#tab-7d")
    await page.keyboard.press("ArrowLeft")
    await page.wait_for_selector('#tab-24h[aria-selected="true"]')
    await assert_cards_show(page, day)
    assert await page.evaluate("document.activeElement.id") == "tab-24h"

    # A failed fetch keeps the previous numbers and selection, and says so quietly.
    await page.route("**/api/me/home-stats*", lambda route: route.abort())
    await page.click("#tab-7d")
    status = page.locator("[data-frame-status]")
    await page.wait_for_function("() => document.querySelector('[data-frame-status]').textContent.length > 0")
    assert await status.inner_text() == "Could not update just now; showing the previous numbers."
    assert await selected_tab(page) == "24h"
    await assert_cards_show(page, day)
    # Failed from the keyboard: focus goes back to the selected pill, not the one that failed.
    await page.evaluate("document.querySelector('[data-frame-status]').textContent = ''")
    await page.focus("#tab-24h")
    await page.keyboard.press("ArrowRight")
    await page.wait_for_function("() => document.querySelector('[data-frame-status]').textContent.length > 0")
    assert await page.evaluate("document.activeElement.id") == "tab-24h"
    assert await selected_tab(page) == "24h"
    await page.unroute("**/api/me/home-stats*")
    await page.click("#tab-7d")
    await page.wait_for_selector('#tab-7d[aria-selected="true"]')
    assert await status.inner_text() == ""
    await assert_cards_show(page, week)

    # Reloading ?window=7d renders 7d on the server.
    await page.reload()
    assert await selected_tab(page) == "7d"
    await assert_cards_show(page, week)

    # The browser's rules are the server's rules.
    numbers = [value for value, _ in ABBREVIATIONS]
    assert await page.evaluate("ns => ns.map(window.AgnesHome.abbreviate)", numbers) == \
        [abbreviate(n) for n in numbers]
    assert await page.evaluate("ns => ns.map(window.AgnesHome.grouped)", numbers) == [grouped(n) for n in numbers]
    now_ms = int(NOW.timestamp() * 1000)
    stamps = [None if ago is None else (NOW - ago).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
              for ago, _ in RELATIVE]
    got = await page.evaluate("([xs, now]) => xs.map(x => window.AgnesHome.relative(x, now))", [stamps, now_ms])
    assert got == [reltime(s, NOW) for s in stamps] == [text for _, text in RELATIVE]

    # "Last sync" keeps ticking: a minute later (on the page's fake clock) it reads 4m ago.
    assert await card(page, "last_pull_at") == ("3m ago", "2026-11-21 11:57:00 UTC")
    await page.clock.fast_forward(61_000)
    await page.wait_for_function("() => document.querySelector('[data-field=last_pull_at]').textContent === '4m ago'")

    # Between phone and desktop (a 1280px laptop at 125% zoom): no card cuts its value short.
    for width in (1024, 800):
        await page.set_viewport_size({"width": width, "height": 860})
        cut = await page.evaluate("[...document.querySelectorAll('.stat-value')]"
                                  ".filter(el => el.scrollWidth > el.clientWidth).map(el => el.dataset.field)")
        assert cut == [], (width, cut)

    # Narrow screen: two columns, Last sync across the top.
    await page.set_viewport_size({"width": 390, "height": 844})
    boxes = {}
    for name in ("last_pull_at", "sessions", "prompts", "tokens.total", "projects"):
        boxes[name] = await page.locator(f'[data-field="{name}"]').evaluate(
            "el => { const r = el.closest('.stat').getBoundingClientRect(); return [r.x, r.y, r.width]; }")
    assert boxes["sessions"][1] == boxes["prompts"][1] > boxes["last_pull_at"][1]
    assert boxes["tokens.total"][1] == boxes["projects"][1] > boxes["sessions"][1]
    assert boxes["sessions"][0] < boxes["prompts"][0]
    assert abs(boxes["last_pull_at"][2] - 2 * boxes["sessions"][2]) < 20
    await page.screenshot(path=str(ARTIFACTS / "home-narrow.png"), full_page=True)

    # Only the two fetches this test aborted on purpose may have complained.
    assert errors == ["Failed to load resource: net::ERR_FAILED"] * 2
    await context.close()
    assert Path(ARTIFACTS / "home.png").stat().st_size > 10_000


async def test_install_hero_and_acknowledge_in_a_real_browser(browser, site):
    server, _ = site
    base = str(server.make_url("")).rstrip("/")
    dana = await make_caller(server.app[keys.DB], "dana@example.com", onboarded=False, name="Dana")
    ARTIFACTS.mkdir(exist_ok=True)
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1,
                                        java_script_enabled=False)
    page = await context.new_page()
    await sign_in(page, base, dana.token)

    hero = page.locator(".hero")
    assert await page.locator("[data-status-frame]").count() == 0
    assert f"agnes init --server-url {base} --token-file ~/.agnes/token" in await hero.inner_text()
    assert dana.token not in await page.content()
    await page.screenshot(path=str(ARTIFACTS / "home-hero.png"), full_page=True)
    # On a phone the long `agnes init` line scrolls inside its box; the page itself never scrolls sideways.
    await page.set_viewport_size({"width": 360, "height": 800})
    assert await page.evaluate("document.documentElement.scrollWidth") <= 360
    await page.set_viewport_size({"width": 1280, "height": 900})

    # JavaScript is off in this context: the button is a plain form, answered with a 303 to /home.
    await page.click("text=I've already set this up")
    await page.wait_for_url(f"{base}/home")
    await page.locator("[data-status-frame]").wait_for()
    assert await card(page, "sessions") == ("0", "0")
    assert await card(page, "last_pull_at") == ("never", "No agnes pull yet")
    assert await page.locator("text=Mark me as offboarded").is_visible()
    assert [(r["action"], r["source"]) for r in await users.audit_rows(server.app[keys.DB], dana.user.id)
            if r["action"] == "onboarded"] == [("onboarded", "self_acknowledged")]
    await context.close()


def _luminance(css_color: str) -> float:
    """Relative luminance (0 black .. 1 white) of a computed `rgb(r, g, b)` colour."""
    import re

    r, g, b = (int(v) / 255 for v in re.findall(r"\d+", css_color)[:3])
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


async def test_dark_mode_follows_the_browser_and_touch_screens_are_told_to_tap(browser, site):
    """A browser set to dark got the light page; on a touch screen the Tokens card said "hover"."""
    server, alice = site
    base = str(server.make_url("")).rstrip("/")
    styles = "el => [getComputedStyle(el).color, getComputedStyle(el).backgroundColor]"
    for scheme in ("light", "dark"):
        context = await browser.new_context(color_scheme=scheme)
        page = await context.new_page()
        await sign_in(page, base, alice.token)
        fg, bg = await page.locator("body").evaluate(styles)
        card_fg = await page.locator(".stat-tokens .stat-value").evaluate("el => getComputedStyle(el).color")
        card_bg = await page.locator(".stat-tokens").evaluate("el => getComputedStyle(el).backgroundColor")
        if scheme == "dark":
            assert _luminance(bg) < 0.05 and _luminance(fg) > 0.5, (fg, bg)
            assert _luminance(card_bg) < 0.1 and _luminance(card_fg) > 0.5, (card_fg, card_bg)
        else:
            assert _luminance(bg) > 0.8 and _luminance(fg) < 0.1, (fg, bg)
        # Text keeps at least 4.5:1 contrast on the cards in both schemes.
        light, dark = sorted((_luminance(card_fg), _luminance(card_bg)), reverse=True)
        assert (light + 0.05) / (dark + 0.05) >= 4.5, scheme
        hint = (await page.locator(".stat-tokens .stat-hint").inner_text()).strip()
        assert hint == "input, output and cache: hover for the split", hint
        await context.close()

    # A phone: no hover, a touch screen.
    context = await browser.new_context(has_touch=True, is_mobile=True, viewport={"width": 390, "height": 844})
    page = await context.new_page()
    await sign_in(page, base, alice.token)
    assert await page.evaluate("matchMedia('(hover: none)').matches")
    hint = (await page.locator(".stat-tokens .stat-hint").inner_text()).strip()
    assert hint == "input, output and cache: tap for the split", hint
    await page.locator(".stat-tokens").tap()
    await page.wait_for_function(SPLIT_OPEN)
    await context.close()
