"""The OpenAPI 3.1 description of the JSON API, served at GET /api/openapi.json.

Written as data, by hand, so it states the contract precisely (enums, bounds, the
error shape) rather than whatever the code happens to emit; tests/test_openapi.py
checks it against the registered routes, the response Structs and real responses,
and fuzzes the live server with it (schemathesis).

It needs a credential like every /api/* route (SPEC.md), though it holds no user data.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from ..store.tables import TABLE_ID
from .upload import FILE_NAME

# ISO 8601 UTC as timeutil.to_api writes it: 2026-11-21T12:00:00Z or ...12:00:00.400Z.
TIMESTAMP = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z$"}
COUNT = {"type": "integer", "minimum": 0}
DATE = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}
USD = {"type": ["number", "null"], "minimum": 0, "description": "Estimated US dollars; null when hidden."}
CSV = "text/csv"
JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, headers: dict | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _error(description: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{description}"}


def _obj(properties: dict[str, Any], required: list[str] | None = None, *, closed: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "required": list(properties) if required is None else required}
    if closed:
        schema["additionalProperties"] = False
    return schema


SCHEMAS: dict[str, Any] = {
    "Error": {**_obj({"detail": {"type": "string",
                                 "description": "A message for a person (the agnes client prints it)."},
                      "code": {"type": "string", "pattern": "^[a-z_]+$", "description": "A machine code."}}),
              "description": "The one error body of every /api route."},
    "Profile": _obj({"id": {"type": "integer", "minimum": 1}, "email": {"type": "string"}, "name": {"type": "string"},
                     "onboarded": {"type": "boolean"},
                     "last_pull_at": {"anyOf": [TIMESTAMP, {"type": "null"}],
                                      "description": "When the last `agnes pull` fetched the manifest."},
                     "client": {"anyOf": [_ref("ClientSeen"), {"type": "null"}],
                                "description": "The `agnes` client last seen (its User-Agent); null before any."},
                     "last_pull": {"anyOf": [_ref("LastPull"), {"type": "null"}],
                                   "description": "How the last pull ended (POST /api/sync/pull-confirm, sent by "
                                                  "0.84.8 and later); null before any."}}),
    "ClientSeen": _obj({"version": {"type": "string"}, "os": {"type": "string"},
                        "seen_at": {"anyOf": [TIMESTAMP, {"type": "null"}],
                                    "description": "To the minute."}}),
    "LastPull": _obj({"finished_at": {"anyOf": [TIMESTAMP, {"type": "null"}]}, "errors": COUNT,
                      "duration_ms": COUNT}),
    "PullConfirm": {**_obj({"errors": {**COUNT, "maximum": 2**63 - 1, "default": 0},
                            "duration_ms": {**COUNT, "maximum": 2**63 - 1, "default": 0}}, [], closed=False),
                    "description": "What `agnes pull` sends when it is done; other keys (direct_tables, "
                                   "data_packages, memory_domains, ...) are accepted and ignored."},
    "PullConfirmResult": _obj({"status": {"const": "ok"},
                               "recorded": {"type": "boolean",
                                            "description": "False for a browser's cookie: only the client pulls."}}),
    "Tokens": _obj({"input": COUNT, "output": COUNT, "cache_read": COUNT, "cache_creation": COUNT, "total": COUNT}),
    "HomeStats": _obj({"window": {"enum": ["24h", "7d"]},
                       "last_pull_at": {"anyOf": [TIMESTAMP, {"type": "null"}]},
                       "sessions": COUNT, "prompts": COUNT, "tokens": _ref("Tokens"), "projects": COUNT}),
    "OnboardedBody": {**_obj({"source": {"enum": ["agnes_init", "self_acknowledged", "self_unmark"],
                                         "default": "agnes_init"},
                              "onboarded": {"type": "boolean", "default": True}}, []),
                      "description": "Both fields optional: `{}` or no body at all means agnes_init, true."},
    "OnboardedResult": _obj({"status": {"const": "ok"}, "onboarded": {"type": "boolean"}}),
    "UploadResult": _obj({"status": {"const": "ok"}, "filename": {"type": "string", "pattern": FILE_NAME.pattern},
                          "size": COUNT}),
    "ManifestTable": _obj({"hash": {"type": "string", "pattern": "^[0-9a-f]{32}$", "description": "md5 of the file"},
                           "updated": TIMESTAMP, "size_bytes": COUNT, "rows": COUNT,
                           "query_mode": {"enum": ["local", "remote"]}, "source_type": {"type": "string"}}),
    "Manifest": _obj({"tables": {"type": "object", "additionalProperties": _ref("ManifestTable"),
                                 "propertyNames": {"pattern": TABLE_ID.pattern}},
                      "assets": {"type": "object", "additionalProperties": {"type": "string"}},
                      "server_time": TIMESTAMP}),
    "CatalogTable": _obj({"id": {"type": "string", "pattern": TABLE_ID.pattern}, "rows": COUNT,
                          "query_mode": {"enum": ["local", "remote"]}, "source_type": {"type": "string"}}),
    "Catalog": _obj({"tables": {"type": "array", "items": _ref("CatalogTable")}}),
    "MemoryItem": _obj({"id": {"type": "string"}, "title": {"type": "string"}, "content": {"type": "string"},
                        "domain": {"type": "string"}, "category": {"type": "string"}},
                       ["id", "title", "content"]),
    "MemoryBundle": _obj({"mandatory": {"type": "array", "items": _ref("MemoryItem")},
                          "approved": {"type": "array", "items": _ref("MemoryItem")}}),
    "Welcome": _obj({"content": {"type": "string", "description": "CLAUDE.md text for the analyst's workspace."}}),
    "LocalMd": _obj({"content": {"type": "string"}}),
    "LocalMdResult": _obj({"status": {"const": "ok"}, "size": COUNT}),
    "CliLatest": _obj({"version": {"type": ["string", "null"]}}),
    "ReprocessBody": {**_obj({"user": {"type": ["string", "null"], "description": "Only this user's files."}}, []),
                      "description": "No body, or no `user`: every file."},
    "ReprocessResult": _obj({"status": {"const": "ok"}, "files": COUNT}),
    "QuarantinedFile": _obj({"id": COUNT, "email": {"type": ["string", "null"]}, "path": {"type": ["string", "null"]},
                             "failure_count": COUNT, "last_error": {"type": ["string", "null"]},
                             "quarantined_at": {"anyOf": [TIMESTAMP, {"type": "null"}]}}),
    "Quarantine": _obj({"files": {"type": "array", "items": _ref("QuarantinedFile")}}),
    "RetryBody": {**_obj({"id": {"type": ["integer", "null"], "description": "Only this file."}}, []),
                  "description": "No body, or no `id`: every quarantined file."},
    "AdminUsage": {**_obj({
        "range": {"enum": ["7d", "30d", "90d"]}, "price_table": {"type": "string"}, "days_are": {"const": "UTC"},
        "per_analyst": {"type": "boolean"},
        "min_group": {"type": ["integer", "null"], "description": "With per_analyst off: the fewest analysts a "
                                                                  "shown row covers."},
        "kpis": {**_ref("AdminKpis")},
        "days": {"type": "array", "items": _ref("AdminDay")},
        "by_model": {"type": "array", "items": _obj({"model": {"type": "string"}, "analysts": COUNT, "messages": COUNT,
                                                       "cost_usd": USD}, ["model", "analysts", "cost_usd"])},
        "unpriced_messages": {"type": ["integer", "null"], "minimum": 0},
        "analysts": {"type": "array", "items": _ref("AdminAnalyst"),
                     "description": "Absent when per-analyst rows are off (AGNES_ADMIN_PER_ANALYST)."},
        "tools": {"type": "array", "items": _obj({
            "kind": {"enum": ["tool_use", "mcp_call", "subagent", "skill", "slash_command", "other"]},
            "name": {"type": "string"}, "source": {"type": "string"}, "invocations": COUNT, "analysts": COUNT,
            "sessions": COUNT, "errors": COUNT})},
        "needs_help": {"type": "object", "additionalProperties": False,
                       "required": ["never_synced", "no_transcripts", "inactive_14d"],
                       "properties": {key: {"anyOf": [COUNT, {"type": "array", "items": _obj(
                           {"email": {"type": "string"}, "name": {"type": "string"}})}]}
                           for key in ("never_synced", "no_transcripts", "inactive_14d")},
                       "description": "Names with per-analyst rows on, counts with them off."},
        "health": _obj({"queue_depth": COUNT, "lag_seconds": {"type": "number", "minimum": 0},
                        "files_last_hour": COUNT, "skipped_lines": COUNT, "failing": COUNT,
                        "quarantined": {"type": "array", "items": _obj({
                            "id": COUNT, "failure_count": COUNT, "last_error": {"type": ["string", "null"]},
                            "quarantined_at": {"anyOf": [TIMESTAMP, {"type": "null"}]},
                            "email": {"type": "string"}, "path": {"type": "string"}},
                            ["id", "failure_count", "last_error", "quarantined_at"])},
                        "processor_version": COUNT, "awaiting_reprocess": COUNT})},
        [k for k in ("range", "price_table", "days_are", "per_analyst", "min_group", "kpis", "days", "by_model",
                     "unpriced_messages", "tools", "needs_help", "health")]),
        "description": "The operators' view of the team over UTC days (issue 22)."},
    "AdminKpis": _obj({
        "active_analysts": {"type": ["integer", "null"], "minimum": 0}, "onboarded": COUNT,
        "sessions": {"type": ["integer", "null"], "minimum": 0}, "prompts": {"type": ["integer", "null"], "minimum": 0},
        "tokens": {"anyOf": [_ref("Tokens"), {"type": "null"}]}, "cost_usd": USD,
        "active_seconds": {"type": ["integer", "null"], "minimum": 0},
        "suppressed": {"const": True, "description": "The period covers fewer than min_group analysts."},
        "previous": {"$ref": "#/components/schemas/AdminKpis"}},
        ["active_analysts", "onboarded", "sessions", "prompts", "tokens", "cost_usd", "active_seconds"]),
    "AdminDay": _obj({
        "date": DATE, "active_analysts": {"type": ["integer", "null"], "minimum": 0},
        "sessions": {"type": ["integer", "null"], "minimum": 0}, "prompts": {"type": ["integer", "null"], "minimum": 0},
        "tokens": {"anyOf": [_ref("Tokens"), {"type": "null"}]}, "cost_usd": USD,
        "active_seconds": {"type": ["integer", "null"], "minimum": 0},
        "suppressed": {"const": True, "description": "Fewer than min_group analysts: every figure is null."}},
        ["date", "active_analysts", "sessions", "prompts", "tokens", "cost_usd", "active_seconds"]),
    "AdminAnalyst": _obj({
        "user_id": {"type": "integer", "minimum": 1}, "email": {"type": "string"}, "name": {"type": "string"},
        "onboarded": {"type": "boolean"}, "last_pull_at": {"anyOf": [TIMESTAMP, {"type": "null"}]},
        "last_active_at": {"anyOf": [TIMESTAMP, {"type": "null"}]}, "client_version": {"type": ["string", "null"]},
        "sessions": COUNT, "prompts": COUNT, "tokens": _ref("Tokens"), "cost_usd": USD, "active_seconds": COUNT}),
    "RetryResult": _obj({"status": {"const": "ok"}, "released": {"type": "array", "items": COUNT}}),
    "ActivityDay": _obj({"date": DATE, "sessions": COUNT, "prompts": COUNT, "messages": COUNT,
                         "tokens": _ref("Tokens"), "cost_usd": USD, "active_seconds": COUNT}),
    "ModelUsage": _obj({"model": {"type": "string"}, "messages": COUNT, "tokens": _ref("Tokens"),
                        "cost_usd": {**USD, "description": "null: the model has no known price (or cost is hidden)."}}),
    "ProjectUsage": _obj({"project": {"type": ["string", "null"]}, "sessions": COUNT, "prompts": COUNT,
                          "messages": COUNT, "tokens": _ref("Tokens"), "cost_usd": USD, "active_seconds": COUNT}),
    "ActivityTotals": _obj({"sessions": COUNT, "prompts": COUNT, "messages": COUNT, "tokens": _ref("Tokens"),
                            "cost_usd": USD, "unpriced_messages": COUNT, "fast_messages": COUNT,
                            "active_seconds": COUNT}),
    "Activity": _obj({"range": {"enum": ["7d", "30d", "90d"]}, "tz": {"type": "string"},
                      "price_table": {"type": ["string", "null"], "description": "The price table's version."},
                      "totals": _ref("ActivityTotals"), "days": {"type": "array", "items": _ref("ActivityDay")},
                      "by_model": {"type": "array", "items": _ref("ModelUsage")},
                      "by_project": {"type": "array", "items": _ref("ProjectUsage")}}),
    "SessionSummary": _obj({"session_id": {"type": "string"}, "project": {"type": ["string", "null"]},
                            "started_at": {"anyOf": [TIMESTAMP, {"type": "null"}]},
                            "ended_at": {"anyOf": [TIMESTAMP, {"type": "null"}]}, "active_seconds": COUNT,
                            "prompts": COUNT, "messages": COUNT, "tokens": _ref("Tokens"), "cost_usd": USD,
                            "primary_model": {"type": ["string", "null"]}, "tool_calls": COUNT,
                            "tool_errors": COUNT}),
    "SessionsPage": _obj({"sessions": {"type": "array", "items": _ref("SessionSummary")},
                          "next_cursor": {"type": ["string", "null"]},
                          "price_table": {"type": ["string", "null"]}}),
    "SessionDetail": _obj({"session": _ref("SessionSummary"), "price_table": {"type": ["string", "null"]},
                           "hours": {"type": "array", "items": _obj({"hour": TIMESTAMP, "prompts": COUNT,
                                                                     "messages": COUNT, "tokens": COUNT})},
                           "tools": {"type": "array", "items": _obj({
                               "kind": {"enum": ["tool_use", "subagent", "mcp_call", "skill", "slash_command"]},
                               "name": {"type": "string"}, "uses": COUNT, "errors": COUNT})}}),
    "TimezoneBody": _obj({"tz": {"type": "string", "description": "An IANA zone name such as Europe/Prague."}}),
    "TimezoneResult": _obj({"tz": {"type": "string"}}),
    "Health": _obj({"status": {"const": "ok"}}),
    "Ready": _obj({"status": {"const": "ok"},
                   "checks": {"type": "object", "additionalProperties": {"const": "ok"}}}),
    "NotReady": _obj({"status": {"const": "unavailable"}, "detail": {"type": "string"}, "code": {"const": "not_ready"},
                      "failed": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                      "checks": {"type": "object", "additionalProperties": {"type": "string"}}}),
}

_ERROR = {JSON: {"schema": _ref("Error")}}
RESPONSES: dict[str, Any] = {
    "BadRequest": {"description": "Invalid input; `detail` says what and where.", "content": _ERROR},
    "Unauthorized": {"description": "Missing, malformed, unknown or revoked credential.", "content": _ERROR,
                     "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}},
    "Forbidden": {"description": "A cookie-authenticated state change without the page's CSRF token or from "
                                 "another origin.", "content": _ERROR},
    "NotFound": {"description": "Nothing here for this caller.", "content": _ERROR},
    "TooLarge": {"description": "The body exceeds the limit.", "content": _ERROR},
    "Unavailable": {"description": "`database_busy` (another process holds the database's write lock) or "
                                   "`storage_full` (no space left): retry after `Retry-After` seconds.",
                    "headers": {"Retry-After": {"schema": {"type": "string"}}}, "content": _ERROR},
    "UnsupportedMediaType": {"description": "The body is not JSON.", "content": _ERROR},
}

_AUTH_ERRORS = {"401": _error("Unauthorized")}
_WRITE_ERRORS = {"401": _error("Unauthorized"), "403": _error("Forbidden"), "503": _error("Unavailable")}
_RANGE = {"Content-Length": {"schema": {"type": "integer", "minimum": 0}},
          "Accept-Ranges": {"schema": {"const": "bytes"}},
          "ETag": {"schema": {"type": "string"}}}


def _get(operation_id: str, summary: str, responses: dict[str, Any], *, tag: str = "me",
         parameters: list | None = None, public_route: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": operation_id, "summary": summary, "tags": [tag], "responses": responses}
    if parameters:
        op["parameters"] = parameters
    if public_route:
        op["security"] = []
    else:
        op["responses"] = {**responses, **_AUTH_ERRORS}
    return op


_RANGE_PARAM = {"name": "range", "in": "query", "required": False, "schema": {"type": "string"},
                "description": "7d, 30d or 90d; anything else (or nothing) means 30d."}
_TZ_PARAM = {"name": "tz", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "An IANA zone (Area/City) for the days; default: the one remembered, else UTC. "
                            "A name that is not a zone is a 400."}
_FORMAT_PARAM = {"name": "format", "in": "query", "required": False, "schema": {"enum": ["json", "csv"]},
                 "description": "csv: the same numbers as a CSV file."}
_profile = _get("getProfile", "The caller's profile.", {"200": _json(_ref("Profile"), "The profile.")})
_download_params = [
    {"name": "table_id", "in": "path", "required": True, "schema": {"type": "string"},
     "description": f"A table id ({TABLE_ID.pattern}); any other value is a 404."},
    {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "One byte range, e.g. bytes=0-0."},
]
_download_responses = {
    "200": {"description": "The whole file (no Content-Encoding).", "headers": _RANGE,
            "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                "contentMediaType": "application/octet-stream"}}}},
    "206": {"description": "The requested range.",
            "headers": {**_RANGE, "Content-Range": {"schema": {"type": "string"}}},
            "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                "contentMediaType": "application/octet-stream"}}}},
    "404": _error("NotFound"),
    "416": {"description": "The range starts at or past the end of the file, or is the empty suffix bytes=-0 "
                           "(Content-Range: bytes */size). Other units, several ranges or an invalid range are "
                           "ignored (200, the whole file).",
            "headers": {"Content-Range": {"schema": {"type": "string"}}}, "content": _ERROR},
}

PATHS: dict[str, Any] = {
    "/api/me": {"get": _profile},
    "/api/me/profile": {"get": {**_profile, "operationId": "getProfileAlias",
                                "summary": "The caller's profile (what `agnes onboarded status` reads)."}},
    "/api/me/home-stats": {"get": _get(
        "getHomeStats", "The status frame numbers for a window.",
        {"200": _json(_ref("HomeStats"), "Activity inside the window; zeros and null for a user without data.")},
        parameters=[{"name": "window", "in": "query", "required": False, "schema": {"type": "string"},
                     "description": "24h or 7d; anything else (or nothing) means 24h, not an error."}])},
    "/api/me/activity": {"get": _get(
        "getActivity", "The caller's activity over local days: daily series, by model, by project, cost.",
        {"200": {"description": "The range's numbers (JSON), or its days as CSV with format=csv.",
                 "content": {JSON: {"schema": _ref("Activity")}, CSV: {"schema": {"type": "string"}}}},
         "400": _error("BadRequest")},
        parameters=[_RANGE_PARAM, _TZ_PARAM, _FORMAT_PARAM])},
    "/api/me/sessions": {"get": _get(
        "listSessions", "The caller's sessions with activity in the range, newest first unless sorted.",
        {"200": {"description": "A page of sessions (JSON), or as CSV with format=csv.",
                 "content": {JSON: {"schema": _ref("SessionsPage")}, CSV: {"schema": {"type": "string"}}}},
         "400": _error("BadRequest")},
        parameters=[_RANGE_PARAM, _TZ_PARAM, _FORMAT_PARAM,
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer"},
                     "description": "Sessions per page: default 50, clamped to 1-200."},
                    {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"},
                     "description": "next_cursor of the previous page."},
                    {"name": "sort", "in": "query", "required": False,
                     "schema": {"type": "string", "pattern": "^([+-]?(start|project|duration|active|prompts|tokens|"
                                                            "cost|model|tool_calls|tool_errors))?$"},
                     "description": "Largest (newest) first; a leading + sorts ascending."}])},
    "/api/me/sessions/{session_id}": {"get": _get(
        "getSession", "One of the caller's sessions: counters, activity per hour, tools (never its text).",
        {"200": _json(_ref("SessionDetail"), "The session."), "404": _error("NotFound")},
        parameters=[{"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"},
                     "description": "Another analyst's session id is as unknown as a made-up one."}])},
    "/api/me/timezone": {"post": {
        "operationId": "setTimezone", "summary": "Remember the zone the caller's days are counted in.",
        "tags": ["me"],
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref("TimezoneBody")}}},
        "responses": {"200": _json(_ref("TimezoneResult"), "Remembered."), "400": _error("BadRequest"),
                      "413": _error("TooLarge"), "415": _error("UnsupportedMediaType"), **_WRITE_ERRORS}}},
    "/api/me/onboarded": {"post": {
        "operationId": "setOnboarded", "summary": "Mark the caller onboarded or offboarded (idempotent, audited).",
        "tags": ["me"],
        "requestBody": {"required": False, "content": {
            JSON: {"schema": _ref("OnboardedBody")},
            "application/x-www-form-urlencoded": {"schema": {
                **_obj({"source": {"enum": ["agnes_init", "self_acknowledged", "self_unmark"]},
                        "onboarded": {"enum": ["true", "false"]}, "csrf_token": {"type": "string"}}, [])},
                "description": "The /home buttons; answered with 303 to /home. A cookie sign-in must send the "
                               "page's csrf_token (a bearer token needs none)."}}},
        "responses": {"200": _json(_ref("OnboardedResult"), "The new state."),
                      "303": {"description": "Form posts from /home go back to /home."},
                      "400": _error("BadRequest"), "404": _error("NotFound"), "413": _error("TooLarge"),
                      "415": _error("UnsupportedMediaType"), **_WRITE_ERRORS}}},
    "/api/upload/sessions": {"post": {
        "operationId": "uploadSession", "summary": "Upload one transcript (plain or gzip); processed right away.",
        "tags": ["ingest"],
        "requestBody": {"required": True, "content": {"multipart/form-data": {
            "schema": {"type": "object", "required": ["file"], "additionalProperties": False, "properties": {
                "file": {"type": "string", "contentMediaType": "application/octet-stream",
                         "description": f"A transcript, plain or gzip. File name must match {FILE_NAME.pattern} "
                                        "and not start with a dot; a .gz name or gzip content is stored "
                                        "decompressed (a gzip inside the gzip is refused)."}}}}}},
        "responses": {"200": _json(_ref("UploadResult"), "Stored; a re-upload of a grown file replaces it."),
                      "400": _error("BadRequest"), "413": _error("TooLarge"), **_WRITE_ERRORS}}},
    "/api/admin/reprocess": {"post": {
        "operationId": "adminReprocess", "summary": "Force a full reprocess (operators in AGNES_ADMIN_EMAILS).",
        "tags": ["admin"],
        "requestBody": {"required": False, "content": {JSON: {"schema": _ref("ReprocessBody")}}},
        "responses": {"200": _json(_ref("ReprocessResult"), "Files queued for the worker."),
                      "400": _error("BadRequest"), "404": _error("NotFound"), "413": _error("TooLarge"),
                      "415": _error("UnsupportedMediaType"), **_WRITE_ERRORS}}},
    "/api/admin/quarantine": {"get": _get(
        "adminQuarantine", "Quarantined files with their last error (operators only).",
        {"200": _json(_ref("Quarantine"), "The files."), "403": _error("Forbidden")}, tag="admin")},
    "/api/admin/usage": {"get": _get(
        "adminUsage", "The team's adoption, spend, tools and pipeline health over UTC days (operators only).",
        {"200": {"description": "The range's figures (JSON), or one of its tables as CSV with format=csv.",
                 "content": {JSON: {"schema": _ref("AdminUsage")}, CSV: {"schema": {"type": "string"}}}},
         "400": _error("BadRequest"), "403": _error("Forbidden")},
        tag="admin", parameters=[
            {"name": "range", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "7d, 30d or 90d; anything else (or nothing) means 7d."},
            _FORMAT_PARAM,
            {"name": "table", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "With format=csv: analysts, tools or days (default); analysts is a 400 when "
                            "per-analyst rows are off."}])},
    "/api/admin/quarantine/retry": {"post": {
        "operationId": "adminQuarantineRetry", "summary": "Release quarantined files for another try (operators only).",
        "tags": ["admin"],
        "requestBody": {"required": False, "content": {
            JSON: {"schema": _ref("RetryBody")},
            "application/x-www-form-urlencoded": {"schema": {
                "type": "object", "properties": {"id": {"type": "string", "pattern": "^[0-9]*$"},
                                                 "csrf_token": {"type": "string"}},
                "description": "/admin's retry button (a browser's cookie also needs csrf_token)."}}}},
        "responses": {"200": _json(_ref("RetryResult"), "The released file ids."),
                      "303": {"description": "A form post: released; back to /admin.",
                              "headers": {"Location": {"schema": {"type": "string"}}}},
                      "400": _error("BadRequest"),
                      "413": _error("TooLarge"), "415": _error("UnsupportedMediaType"), **_WRITE_ERRORS}}},
    "/api/upload/local-md": {"post": {
        "operationId": "uploadLocalMd", "summary": "Keep the analyst's local CLAUDE.md (at most 1 MB).",
        "tags": ["sync"],
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref("LocalMd")}}},
        "responses": {"200": _json(_ref("LocalMdResult"), "Stored."), "400": _error("BadRequest"),
                      "413": _error("TooLarge"), "415": _error("UnsupportedMediaType"), **_WRITE_ERRORS}}},
    "/api/sync/manifest": {"get": _get(
        "getManifest", "The tables the caller may read; stamps the caller's last pull.",
        {"200": _json(_ref("Manifest"), "The manifest.")}, tag="sync")},
    "/api/sync/pull-confirm": {"post": {
        "operationId": "confirmPull", "summary": "How the caller's pull ended (shown on the profile and Last sync).",
        "tags": ["sync"],
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref("PullConfirm")}}},
        "responses": {"200": _json(_ref("PullConfirmResult"), "Kept."), "400": _error("BadRequest"),
                      "413": _error("TooLarge"), "415": _error("UnsupportedMediaType"), **_WRITE_ERRORS}}},
    "/api/data/{table_id}/download": {
        "get": _get("downloadTable", "A table's file, with single Range requests and an ETag.",
                    _download_responses, tag="sync", parameters=_download_params),
        "head": _get("probeTable", "Content-Length and Accept-Ranges of a table's file (no body).",
                     {"200": {"description": "The file's headers.", "headers": _RANGE},
                      "206": {"description": "The range's headers.", "headers": _RANGE},
                      "404": {"description": "Not a table this caller may read."},
                      "416": {"description": "The range is outside the file."}},
                     tag="sync", parameters=_download_params),
    },
    "/api/catalog/tables": {"get": _get("getCatalog", "The caller's tables (`agnes init` proves its token here).",
                                        {"200": _json(_ref("Catalog"), "The tables.")}, tag="sync")},
    "/api/v2/catalog": {"get": _get("getCatalogV2", "The caller's tables, for `agnes catalog` (as /api/catalog/tables).",
                                    {"200": _json(_ref("Catalog"), "The tables.")}, tag="sync",
                                    parameters=[{"name": "refresh", "in": "query", "required": False,
                                                 "schema": {"type": "string"},
                                                 "description": "Sent by the client (0 or 1); ignored: the "
                                                                "catalog is always current."}])},
    "/api/memory/bundle": {"get": _get("getMemoryBundle", "Memory rules `agnes pull` fetches (lists may be empty).",
                                       {"200": _json(_ref("MemoryBundle"), "The rules.")}, tag="sync")},
    "/api/initial-workspace": {"get": _get("getInitialWorkspace", "No initial workspace is configured: always 404.",
                                           {"404": _error("NotFound")}, tag="sync")},
    "/api/welcome": {"get": _get(
        "getWelcome", "The CLAUDE.md text for the analyst's new workspace.",
        {"200": _json(_ref("Welcome"), "The text.")}, tag="sync",
        parameters=[{"name": "server_url", "in": "query", "required": False, "schema": {"type": "string"},
                     "description": "The URL `agnes init` was given; anything not http(s) is replaced by this "
                                    "server's public URL."}])},
    "/api/openapi.json": {"get": _get("getOpenApi", "This document.",
                                      {"200": _json({"type": "object", "required": ["openapi", "paths"]},
                                                    "The OpenAPI document.")}, tag="meta")},
    "/cli/latest": {"get": _get("getCliLatest", "The newest published client version (none: null).",
                                {"200": _json(_ref("CliLatest"), "No version is published.")}, tag="meta",
                                public_route=True)},
    "/healthz": {"get": _get("healthz", "Liveness: the process answers; no database work.",
                             {"200": _json(_ref("Health"), "Alive.")}, tag="ops", public_route=True)},
    "/api/health": {"get": _get("apiHealth", "The `agnes` client's capability probe; no credential, no database "
                                             "work.",
                                {"200": _json(_ref("Health"), "Alive; X-Agnes-Accepts lists what uploads may be.",
                                              {"X-Agnes-Accepts": {"schema": {"const": "session-gzip"},
                                                                   "description": "Uploads may be gzip."}})},
                                tag="ops", public_route=True)},
    "/readyz": {"get": _get("readyz", "Readiness: database, schema version and ingest worker.",
                            {"200": _json(_ref("Ready"), "Ready."),
                             "503": _json(_ref("NotReady"), "Not ready; `failed` names the checks.")},
                            tag="ops", public_route=True)},
    "/metrics": {"get": _get("metrics", "Prometheus text exposition (no user data).",
                             {"200": {"description": "Metrics.", "content": {"text/plain": {"schema": {
                                 "type": "string"}}}}}, tag="ops", public_route=True)},
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Agnes Home",
        "version": "1",
        "description": "The JSON API of Agnes Home: the /home status frame, the `agnes` client's sync and upload "
                       "calls, and health checks. Every /api error has the body {\"detail\", \"code\"}; every "
                       "response carries X-Request-Id. Browsers signed in at /login may call the same routes with "
                       "their session cookie (state changes then need the page's X-CSRF-Token).",
    },
    "security": [{"bearer": []}],
    "tags": [{"name": n} for n in ("me", "ingest", "sync", "meta", "ops")],
    "paths": PATHS,
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "A personal access token: agnes_pat_... "
                                                      "(`agnes-home tokens issue EMAIL`)."}},
        "schemas": SCHEMAS,
        "responses": RESPONSES,
    },
}

_BODY = msgspec.json.encode(DOCUMENT)


async def openapi_json(request: web.Request) -> web.Response:
    """GET /api/openapi.json: this service's API description. It holds no user data, but SPEC.md has
    every /api/* route identify a user, so it needs a credential like the rest."""
    return web.Response(body=_BODY, content_type="application/json")
