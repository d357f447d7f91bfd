"""Every route of the service, in one place."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from . import activity, admin, api, health, metrics, onboarding, openapi, sync, upload, views


def setup_routes(app: web.Application, static_dir: Path) -> None:
    r = app.router
    r.add_get("/healthz", health.healthz)
    r.add_get("/readyz", health.readyz)
    r.add_get("/metrics", metrics.metrics_handler)

    r.add_get("/", views.index)
    r.add_get("/login", views.login_page)
    r.add_post("/login", views.login_submit)
    r.add_post("/logout", views.logout)
    r.add_get("/home", views.home)
    r.add_get("/activity", activity.activity_page)
    r.add_get("/activity/sessions/{session_id}", activity.session_page)

    r.add_get("/api/me", api.me)
    r.add_get("/api/me/profile", api.me)
    r.add_get("/api/me/home-stats", api.home_stats)
    r.add_post("/api/me/onboarded", onboarding.onboarded)
    r.add_get("/api/me/activity", activity.activity_json)
    r.add_get("/api/me/sessions", activity.sessions_json)
    r.add_get("/api/me/sessions/{session_id}", activity.session_json)
    r.add_post("/api/me/timezone", activity.set_zone)
    r.add_post("/api/upload/sessions", upload.upload_session)

    r.add_post("/api/admin/reprocess", admin.reprocess)
    r.add_get("/api/admin/quarantine", admin.quarantine)
    r.add_post("/api/admin/quarantine/retry", admin.quarantine_retry)

    # What the `agnes` client calls (SPEC.md "Wire compatibility").
    r.add_get("/api/sync/manifest", sync.manifest)
    r.add_get("/api/data/{table_id}/download", sync.download)  # add_get also answers HEAD
    r.add_get("/api/catalog/tables", sync.catalog)
    r.add_get("/api/memory/bundle", sync.memory_bundle)
    r.add_get("/api/initial-workspace", sync.initial_workspace)
    r.add_get("/api/welcome", sync.welcome)
    r.add_post("/api/upload/local-md", sync.upload_local_md)
    r.add_get("/cli/latest", sync.cli_latest)
    r.add_get("/api/openapi.json", openapi.openapi_json)

    if static_dir.is_dir():
        r.add_static("/static", static_dir, name="static", append_version=True)
