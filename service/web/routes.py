"""Every route of the service, in one place."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from . import activity, admin, api, clients, health, metrics, onboarding, openapi, sync, upload, views


def setup_routes(app: web.Application, static_dir: Path) -> None:
    """Every route, named: pages and templates build URLs with ``url("name")`` (url_for)."""
    r = app.router
    # Public: no credential (their handlers are marked @public; everything else identifies a user).
    r.add_get("/healthz", health.healthz, name="healthz")
    r.add_get("/readyz", health.readyz, name="readyz")
    r.add_get("/metrics", metrics.metrics_handler, name="metrics")
    r.add_get("/api/health", health.api_health, name="api_health")
    r.add_get("/cli/latest", sync.cli_latest, name="cli_latest")
    r.add_get("/", views.index, name="index")
    r.add_get("/login", views.login_page, name="login")
    r.add_post("/login", views.login_submit, name="login_submit")
    r.add_post("/logout", views.logout, name="logout")
    if static_dir.is_dir():
        r.add_static("/static", static_dir, name="static", append_version=True)

    # Pages.
    r.add_get("/home", views.home, name="home")
    r.add_get("/activity", activity.activity_page, name="activity")
    r.add_get("/activity/sessions/{session_id}", activity.session_page, name="session")

    # The analyst's own data.
    r.add_get("/api/me", api.me, name="me")
    r.add_get("/api/me/profile", api.me, name="profile")
    r.add_get("/api/me/home-stats", api.home_stats, name="home_stats")
    r.add_post("/api/me/onboarded", onboarding.onboarded, name="onboarded")
    r.add_get("/api/me/activity", activity.activity_json, name="activity_json")
    r.add_get("/api/me/sessions", activity.sessions_json, name="sessions_json")
    r.add_get("/api/me/sessions/{session_id}", activity.session_json, name="session_json")
    r.add_post("/api/me/timezone", activity.set_zone, name="timezone")
    r.add_post("/api/upload/sessions", upload.upload_session, name="upload_session")

    # Operators (AGNES_ADMIN_EMAILS).
    r.add_get("/admin", admin.admin_page, name="admin")
    r.add_get("/admin/analysts/{user_id}/activity", admin.analyst_activity_page, name="admin_analyst_activity")
    r.add_get("/api/admin/usage", admin.usage_json, name="admin_usage")
    r.add_post("/api/admin/reprocess", admin.reprocess, name="admin_reprocess")
    r.add_get("/api/admin/quarantine", admin.quarantine, name="admin_quarantine")
    r.add_post("/api/admin/quarantine/retry", admin.quarantine_retry, name="admin_quarantine_retry")

    # What the `agnes` client calls (SPEC.md "Wire compatibility").
    r.add_get("/api/sync/manifest", sync.manifest, name="manifest")
    r.add_post("/api/sync/pull-confirm", clients.pull_confirm, name="pull_confirm")
    r.add_get("/api/data/{table_id}/download", sync.download, name="download")  # add_get also answers HEAD
    r.add_get("/api/catalog/tables", sync.catalog, name="catalog")
    r.add_get("/api/v2/catalog", sync.catalog, name="catalog_v2")  # `agnes catalog` (init suggests it)
    r.add_get("/api/memory/bundle", sync.memory_bundle, name="memory_bundle")
    r.add_get("/api/initial-workspace", sync.initial_workspace, name="initial_workspace")
    r.add_get("/api/welcome", sync.welcome, name="welcome")
    r.add_post("/api/upload/local-md", sync.upload_local_md, name="local_md")
    r.add_get("/api/openapi.json", openapi.openapi_json, name="openapi")
