"""GET /home: the two gates, server-rendered numbers for 24h and 7d, the install hero, the filters."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import aiohttp_jinja2
import pytest

from service import keys
from service.app import create_app
from service.config import load_settings
from service.store import stats, users
from service.web.filters import abbreviate, grouped, reltime, utc_label
from tests.conftest import make_caller
from tests.test_ingest import NOW, ingest_files, sample_files

CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
OFFBOARD = '<button type="submit" class="link">Mark me as offboarded</button>'
ACK = "I've already set this up"
SCRIPT = re.compile(r'<script src="/static/home\.js\?v=[^"]+" defer></script>')


@pytest.fixture
def make_client(aiohttp_client, settings):
    """A client for an app built with some settings changed, on the test's database, clock at the samples' now."""
    async def make(**overrides):
        changed = load_settings(environ={}, db_path=settings.db_path, database_url=settings.database_url,
                                data_dir=settings.data_dir,
                                secret_key="test-secret", parse_workers=0, **overrides)
        client = await aiohttp_client(create_app(changed))
        client.app[keys.CLOCK].fixed = NOW
        return client
    return make


async def alice_with_data(db, onboarded: bool = True):
    alice = await make_caller(db, "alice@example.com", onboarded=onboarded, name="Alice")
    report = await ingest_files(db, alice.user.id, sample_files("alice"))
    assert report.failed == 0, report.errors
    await users.stamp_pull(db, alice.user.id, NOW - timedelta(minutes=3))
    return alice


def forbid_stats_query(monkeypatch):
    async def must_not_run(*args, **kwargs):
        pytest.fail("a closed gate must skip the stats query")
    monkeypatch.setattr(stats, "home_stats", must_not_run)


def count_stats_queries(monkeypatch) -> list:
    calls = []
    real = stats.home_stats

    async def counted(*args, **kwargs):
        calls.append(args[2])
        return await real(*args, **kwargs)
    monkeypatch.setattr(stats, "home_stats", counted)
    return calls


async def page(client, caller, query: str = "") -> str:
    resp = await client.get(f"/home{query}", headers=caller.headers)
    assert resp.status == 200
    assert resp.content_type == "text/html"
    return await resp.text()


# --- the gates: operator switch x onboarded ---------------------------------------------------

async def test_switch_on_and_onboarded_shows_the_frame_with_24h_numbers(make_client, monkeypatch):
    client = await make_client()
    alice = await alice_with_data(client.app[keys.DB])
    calls = count_stats_queries(monkeypatch)
    html = await page(client, alice)
    assert calls == ["24h"]
    assert 'data-status-frame' in html and ACK not in html and "agnes init --server-url" not in html
    for snippet in [
        '<a class="pill" role="tab" id="tab-24h" href="/home?window=24h" data-window="24h" '
        'aria-controls="stat-cards" aria-selected="true" title="Last 24 hours">24h</a>',
        '<a class="pill" role="tab" id="tab-7d" href="/home?window=7d" data-window="7d" '
        'aria-controls="stat-cards" aria-selected="false" title="Last 7 days">7d</a>',
        '<p class="muted frame-caption" data-window-label>Last 24 hours</p>',
        '<time class="stat-value" data-field="last_pull_at" datetime="2026-11-21T11:57:00Z" '
        'title="2026-11-21 11:57:00 UTC">3m ago</time>',
        '<span class="stat-value" data-field="sessions" title="3">3</span>'
        '<span class="sr-only" data-exact="sessions"></span>',  # nothing abbreviated: nothing to add
        '<span class="stat-value" data-field="prompts" title="9">9</span>',
        '<span class="stat-value" data-field="tokens.total" title="64,504">64.5k</span>'
        '<span class="sr-only" data-exact="tokens.total">(exactly 64,504)</span>',
        '<dd data-field="tokens.total.exact">64,504</dd>',
        '<dd data-field="tokens.input">129</dd>',
        '<dd data-field="tokens.output">1,325</dd>',
        '<dd data-field="tokens.cache_read">56,800</dd>',
        '<dd data-field="tokens.cache_creation">6,250</dd>',
        '<span class="stat-value" data-field="projects" title="2">2</span>',
        'data-now="2026-11-21T12:00:00Z" data-window="24h"',
        OFFBOARD,
    ]:
        assert snippet in html, snippet
    assert SCRIPT.search(html)
    assert "spinner" not in html and "Loading" not in html


async def test_window_7d_is_rendered_on_the_server(make_client, monkeypatch):
    client = await make_client()
    alice = await alice_with_data(client.app[keys.DB])
    calls = count_stats_queries(monkeypatch)
    html = await page(client, alice, "?window=7d")
    assert calls == ["7d"]
    for snippet in [
        'aria-controls="stat-cards" aria-selected="true" title="Last 7 days">7d</a>',
        'aria-controls="stat-cards" aria-selected="false" title="Last 24 hours">24h</a>',
        '<p class="muted frame-caption" data-window-label>Last 7 days</p>',
        '<span class="stat-value" data-field="sessions" title="4">4</span>',
        '<span class="stat-value" data-field="prompts" title="12">12</span>',
        '<span class="stat-value" data-field="tokens.total" title="169,027">169k</span>',
        '<dd data-field="tokens.total.exact">169,027</dd>',
        '<dd data-field="tokens.input">352</dd>',
        '<dd data-field="tokens.output">3,295</dd>',
        '<dd data-field="tokens.cache_read">153,000</dd>',
        '<dd data-field="tokens.cache_creation">12,380</dd>',
        '<span class="stat-value" data-field="projects" title="3">3</span>',
    ]:
        assert snippet in html, snippet


async def test_kept_fragments_follow_the_window_and_new_numbers(make_client):
    """The pills and cards are rendered once per window and set of numbers (service/web/fragments.py):
    pages that alternate windows, and a page after new data arrives, are still exact."""
    client = await make_client()
    db = client.app[keys.DB]
    alice = await alice_with_data(db)
    day, week = await page(client, alice), await page(client, alice, "?window=7d")
    assert await page(client, alice) == day and await page(client, alice, "?window=7d") == week
    assert 'aria-selected="true" title="Last 24 hours">24h</a>' in day
    assert 'aria-selected="true" title="Last 7 days">7d</a>' in week
    assert 'data-field="prompts" title="9">9</span>' in day and 'data-field="prompts" title="12">12</span>' in week
    kept = len(client.app[aiohttp_jinja2.APP_KEY].extensions["service.web.fragments.FragmentCache"].kept)
    assert kept == 6  # pills and cards per window, the auto-mode card, the offboard form (its CSRF token)

    await ingest_files(db, alice.user.id, sample_files("bob"))  # more of alice's activity
    resp = await client.get("/api/me/home-stats?window=7d", headers=alice.headers)
    numbers = await resp.json()
    assert numbers["prompts"] > 12
    week = await page(client, alice, "?window=7d")
    assert f'data-field="prompts" title="{numbers["prompts"]}">{numbers["prompts"]}</span>' in week
    assert f'<dd data-field="tokens.input">{grouped(numbers["tokens"]["input"])}</dd>' in week


async def test_unknown_window_renders_24h(make_client):
    client = await make_client()
    alice = await alice_with_data(client.app[keys.DB])
    html = await page(client, alice, "?window=30d")
    assert 'aria-selected="true" title="Last 24 hours">24h</a>' in html
    assert '<span class="stat-value" data-field="tokens.total" title="64,504">64.5k</span>' in html


async def test_never_pulled_reads_never(make_client):
    client = await make_client()
    bob = await make_caller(client.app[keys.DB], "bob@example.com")
    html = await page(client, bob)
    assert '<time class="stat-value" data-field="last_pull_at" title="No agnes pull yet">never</time>' in html
    assert '<span class="stat-value" data-field="tokens.total" title="0">0</span>' in html


async def test_switch_on_but_not_onboarded_shows_the_hero_without_querying(make_client, monkeypatch):
    client = await make_client()
    alice = await alice_with_data(client.app[keys.DB], onboarded=False)
    forbid_stats_query(monkeypatch)
    html = await page(client, alice, "?window=7d")
    assert "data-status-frame" not in html and not SCRIPT.search(html)
    assert '<h2 id="hero-title">Connect Claude Code to Agnes</h2>' in html
    assert "then this page shows your sessions, prompts and tokens." in html
    assert f'<pre class="code"><code>agnes init --server-url http://{client.host}:{client.port} ' \
           f'--token-file ~/.agnes/token</code></pre>' in html
    assert f'<button type="submit" class="button primary">{ACK}</button>' in html
    assert '<input type="hidden" name="source" value="self_acknowledged">' in html
    assert alice.token not in html
    assert "Mark me as offboarded" not in html


async def test_switch_off_and_onboarded_shows_the_hero_and_the_offboard_control(make_client, monkeypatch):
    client = await make_client(show_status_frame=False)
    alice = await alice_with_data(client.app[keys.DB])
    forbid_stats_query(monkeypatch)
    html = await page(client, alice)
    assert "data-status-frame" not in html and not SCRIPT.search(html)
    assert '<h2 id="hero-title">Setting up another machine?</h2>' in html
    assert "agnes init --server-url" in html and alice.token not in html
    assert ACK not in html  # already onboarded: nothing to acknowledge
    assert OFFBOARD in html
    assert '<input type="hidden" name="source" value="self_unmark">' in html
    assert '<input type="hidden" name="onboarded" value="false">' in html


async def test_switch_off_and_not_onboarded_shows_the_hero(make_client, monkeypatch):
    client = await make_client(show_status_frame=False)
    alice = await alice_with_data(client.app[keys.DB], onboarded=False)
    forbid_stats_query(monkeypatch)
    html = await page(client, alice)
    assert "data-status-frame" not in html
    assert '<h2 id="hero-title">Connect Claude Code to Agnes</h2>' in html
    assert f'<button type="submit" class="button primary">{ACK}</button>' in html
    assert "Mark me as offboarded" not in html
    # The overview is off on this server: the page must not promise numbers after setup.
    assert "Three steps on your machine to connect it to Agnes." in html and "shows your sessions" not in html


@pytest.mark.parametrize("yaml_value, env_value, shown", [
    (None, None, True),      # default: on
    ("false", None, False),  # YAML over the default
    ("false", "1", True),    # the environment over YAML
    ("true", "off", False),
    ("true", "", False),     # the empty string is false
])
async def test_the_frame_switch_resolves_env_over_yaml_over_default(aiohttp_client, tmp_path, yaml_value,
                                                                    env_value, shown):
    """SPEC.md "Configuration", end to end: from the environment a real deployment has to the page."""
    environ = {"AGNES_DB_PATH": str(tmp_path / "a.db"), "AGNES_DATA_DIR": str(tmp_path / "d"),
               "AGNES_SECRET_KEY": "s", "AGNES_PARSE_WORKERS": "0"}
    if yaml_value is not None:
        (tmp_path / "instance.yaml").write_text(f"instance:\n  home:\n    show_status_frame: {yaml_value}\n")
        environ["AGNES_CONFIG"] = str(tmp_path / "instance.yaml")
    if env_value is not None:
        environ["AGNES_HOME_SHOW_STATUS_FRAME"] = env_value
    client = await aiohttp_client(create_app(load_settings(environ=environ)))
    client.app[keys.CLOCK].fixed = NOW
    alice = await make_caller(client.app[keys.DB], "alice@example.com", onboarded=True)
    html = await page(client, alice)
    assert ("data-status-frame" in html) is shown
    assert ('<h2 id="hero-title">Setting up another machine?</h2>' in html) is not shown


async def test_public_url_is_the_server_in_the_init_line(make_client):
    client = await make_client(public_url="https://agnes.example.com/")
    carol = await make_caller(client.app[keys.DB], "carol@example.com", onboarded=False)
    html = await page(client, carol)
    assert '<code>agnes init --server-url https://agnes.example.com --token-file ~/.agnes/token</code>' in html


@pytest.mark.parametrize("show_automode", [True, False])
async def test_automode_card_follows_its_switch(make_client, show_automode):
    client = await make_client(show_automode=show_automode)
    carol = await make_caller(client.app[keys.DB], "carol@example.com")
    html = await page(client, carol)
    assert ('<h2 id="automode-title">Auto mode in Claude Code</h2>' in html) is show_automode


async def test_agnes_onboarded_status_fallback_finds_the_marker(make_client):
    """`agnes onboarded status` fetches /home with its bearer token and looks for this exact text."""
    client = await make_client(show_status_frame=False)
    db = client.app[keys.DB]
    on = await make_caller(db, "on@example.com", onboarded=True)
    off = await make_caller(db, "off@example.com", onboarded=False)
    resp = await client.get("/home", headers=on.headers, allow_redirects=False)
    assert resp.status == 200 and "Mark me as offboarded" in await resp.text()
    resp = await client.get("/home", headers=off.headers, allow_redirects=False)
    assert resp.status == 200 and "Mark me as offboarded" not in await resp.text()


async def test_names_are_escaped(make_client):
    client = await make_client()
    mallory = await make_caller(client.app[keys.DB], "mallory@example.com", name="<script>alert(1)</script>")
    html = await page(client, mallory)
    assert "<script>alert(1)</script>" not in html
    assert "Welcome, &lt;script&gt;alert(1)&lt;/script&gt;</h1>" in html


async def test_no_javascript_flow_acknowledge_then_offboard(make_client):
    """A browser without JavaScript: sign in, press the hero button, see the frame, then offboard."""
    client = await make_client()
    dana = await make_caller(client.app[keys.DB], "dana@example.com", onboarded=False)
    resp = await client.post("/login", data={"token": dana.token}, allow_redirects=False)
    assert resp.status == 303
    html = await (await client.get("/home")).text()
    assert ACK in html
    csrf = CSRF_RE.search(html).group(1)
    resp = await client.post("/api/me/onboarded", data={"csrf_token": csrf, "source": "self_acknowledged",
                                                        "onboarded": "true"})
    assert resp.status == 200 and resp.url.path == "/home"  # followed the 303
    html = await resp.text()
    assert "data-status-frame" in html and OFFBOARD in html
    resp = await client.post("/api/me/onboarded", data={"csrf_token": csrf, "source": "self_unmark",
                                                        "onboarded": "false"})
    html = await resp.text()
    assert resp.url.path == "/home" and ACK in html and "data-status-frame" not in html


# --- the filters (static/home.js mirrors them; tests/test_browser.py compares the two) ------

ABBREVIATIONS = [
    (0, "0"), (7, "7"), (999, "999"), (1000, "1k"), (1049, "1k"), (1050, "1.1k"), (1234, "1.2k"),
    (12_345, "12.3k"), (64_504, "64.5k"), (99_940, "99.9k"), (99_950, "100k"), (169_027, "169k"),
    (999_499, "999k"), (999_500, "1M"), (1_000_000, "1M"), (4_500_000, "4.5M"), (4_549_999, "4.5M"),
    (4_550_000, "4.6M"), (123_456_789, "123M"), (1_234_567_890, "1.2B"), (2_000_000_000_000, "2T"),
]


@pytest.mark.parametrize("value, text", ABBREVIATIONS)
def test_abbreviate(value, text):
    assert abbreviate(value) == text


def test_grouped_and_utc_label():
    assert grouped(64_504) == "64,504" and grouped(7) == "7"
    assert utc_label("2026-11-21T11:57:00Z") == "2026-11-21 11:57:00 UTC"
    assert utc_label(None) == "No agnes pull yet"


RELATIVE = [
    (None, "never"), (timedelta(seconds=-30), "just now"), (timedelta(0), "just now"),
    (timedelta(seconds=59), "just now"), (timedelta(seconds=60), "1m ago"), (timedelta(minutes=3), "3m ago"),
    (timedelta(minutes=59, seconds=59), "59m ago"), (timedelta(hours=1), "1h ago"),
    (timedelta(hours=23, minutes=59), "23h ago"), (timedelta(days=1), "1d ago"), (timedelta(days=40), "40d ago"),
]


@pytest.mark.parametrize("ago, text", RELATIVE)
def test_reltime(ago, text):
    when = None if ago is None else NOW - ago
    assert reltime(when, NOW) == text
    if when is not None:
        assert reltime(when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), NOW) == text


def test_reltime_uses_the_given_now():
    assert reltime("2026-11-21T11:00:00Z", datetime.fromisoformat("2026-11-21T12:30:00+00:00")) == "1h ago"


async def test_assets_are_versioned_by_content(client, alice):
    import re

    page = await (await client.get("/home", headers=alice.headers)).text()
    css = re.search(r'href="(/static/app\.css\?v=[^"]+)"', page)
    assert css, "stylesheet URL carries a content version"
    resp = await client.get(css.group(1))
    assert resp.status == 200 and "text/css" in resp.headers["Content-Type"]


async def test_an_empty_window_says_when_the_analyst_was_last_active_or_how_to_send_data(make_client):
    """Five zeros with no hint left analysts wondering whether anything was broken."""
    client = await make_client()
    db = client.app[keys.DB]
    alice = await alice_with_data(db)
    html = await page(client, alice)  # at the samples' now: numbers, no hint
    assert re.search(r'<p class="frame-empty muted" data-empty-hint data-last-active="21 Nov 2026" hidden>', html)
    client.app[keys.CLOCK].fixed = NOW + timedelta(days=30)
    for window, label in (("", "last 24 hours"), ("?window=7d", "last 7 days")):
        html = await page(client, alice, window)
        hint = re.search(r'<p class="frame-empty muted" data-empty-hint data-last-active="21 Nov 2026">([^<]*)</p>', html)
        assert hint and hint.group(1) == f"No activity in the {label}; last active 21 Nov 2026.", html
    bob = await make_caller(db, "bob@example.com")
    html = await page(client, bob)
    assert '<p class="frame-empty muted" data-empty-hint data-last-active="">Nothing has arrived from your Claude Code ' \
           'yet: run <code>agnes push</code>' in html
