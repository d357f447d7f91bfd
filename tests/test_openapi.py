"""The OpenAPI document against the app: every route documented and back, real responses valid, and
generated requests (schemathesis) answered as documented by the real server."""

from __future__ import annotations

import io
import json
import re
import tempfile
from pathlib import Path

import aiohttp
import jsonschema
import msgspec
import pytest
import referencing
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

from service import keys
from service.web.api import Profile
from service.app import create_app
from service.web.clients import PullConfirm
from service.web.errors import ErrorBody
from service.web.onboarding import OnboardedBody, OnboardedResult
from service.web.openapi import DOCUMENT, PATHS
from service.store import tables
from service.store.clients import ClientSeen, LastPull
from service.store.stats import HomeStats, Tokens
from service.web.sync import LocalMd, Manifest, ManifestTable, MemoryBundle, MemoryItem
from tests.conftest import SAMPLES, make_caller
from tests.test_crash_safety import Server, seed, seed_table

# Hypothesis keeps its caches under the temp dir, not in the work tree.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "agnes-hypothesis")

CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
METHODS = ("get", "head", "post", "put", "patch", "delete", "options")
OUTSIDE_API = ("/cli/latest", "/healthz", "/readyz", "/metrics")
REGISTRY = referencing.Registry().with_resource(
    "urn:agnes", referencing.Resource.from_contents(DOCUMENT, referencing.jsonschema.DRAFT202012))


def documented() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in PATHS.items() for method in ops if method in METHODS}


def schema_for(ref_or_schema: dict) -> dict:
    """A schema whose $refs resolve against the document."""
    return {"$ref": "urn:agnes#/components/schemas/" + ref_or_schema["$ref"].rsplit("/", 1)[1]} \
        if "$ref" in ref_or_schema else {**ref_or_schema, "$id": "urn:agnes-inline"}


def resolve(node: dict) -> dict:
    while "$ref" in node:
        *_, kind, name = node["$ref"].split("/")
        node = DOCUMENT["components"][kind][name]
    return node


def validate(instance, schema: dict) -> None:
    if "$ref" in schema:
        schema = {"$ref": "urn:agnes" + schema["$ref"]}
    jsonschema.Draft202012Validator(schema, registry=REGISTRY).validate(instance)


# --- The document itself ---------------------------------------------------------------------------

def test_document_is_well_formed_openapi_31():
    assert DOCUMENT["openapi"] == "3.1.0"
    for name, schema in DOCUMENT["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)
    ids = [op["operationId"] for ops in PATHS.values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    refs = re.findall(r'"\$ref":\s*"#/components/(\w+)/(\w+)"', json.dumps(DOCUMENT))
    assert refs and all(name in DOCUMENT["components"][kind] for kind, name in refs)
    for path, ops in PATHS.items():
        for method, op in ops.items():
            assert op["responses"], (method, path)
            for status, response in op["responses"].items():
                response = resolve(response)
                assert response["description"]
                if status.startswith(("4", "5")) and path.startswith("/api/") and method != "head":
                    assert resolve(response["content"]["application/json"]["schema"]) is \
                        DOCUMENT["components"]["schemas"]["Error"], (method, path, status)
            params = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
            assert sorted(params) == sorted(re.findall(r"\{(\w+)\}", path)), path
    # schemathesis reads every operation of it (it refuses documents that are not OpenAPI).
    labels = {result.ok().label for result in schemathesis.openapi.from_dict(DOCUMENT).get_all_operations()}
    assert labels == {f"{method} {path}" for method, path in documented()}


def test_every_route_is_documented_and_every_documented_route_exists(settings):
    app = create_app(settings)
    registered = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/api/") or path in OUTSIDE_API:
            registered.add((route.method, path))
    doc = documented()
    # aiohttp answers HEAD on every GET route; the document lists HEAD where a client relies on it.
    assert {r for r in registered if r[0] != "HEAD"} == {d for d in doc if d[0] != "HEAD"}
    assert {d for d in doc if d[0] == "HEAD"} <= registered
    assert ("HEAD", "/api/data/{table_id}/download") in doc


@pytest.mark.parametrize("struct, name", [
    (Profile, "Profile"), (HomeStats, "HomeStats"), (Tokens, "Tokens"), (OnboardedBody, "OnboardedBody"),
    (OnboardedResult, "OnboardedResult"), (Manifest, "Manifest"), (ManifestTable, "ManifestTable"),
    (MemoryBundle, "MemoryBundle"), (MemoryItem, "MemoryItem"), (LocalMd, "LocalMd"), (ErrorBody, "Error"),
    (ClientSeen, "ClientSeen"), (LastPull, "LastPull"), (PullConfirm, "PullConfirm"),
])
def test_the_documented_schemas_have_the_fields_of_the_code(struct, name):
    documented_schema = DOCUMENT["components"]["schemas"][name]
    generated = msgspec.json.schema(struct)
    generated = generated["$defs"][generated["$ref"].rsplit("/", 1)[1]] if "$ref" in generated else generated
    assert set(documented_schema["properties"]) == set(generated["properties"])
    assert set(generated.get("required", [])) <= set(documented_schema.get("required", []))


# --- Real responses against the document -------------------------------------------------------------

class Recorder:
    """Calls the in-process app and validates each response against the documented operation."""

    def __init__(self, client) -> None:
        self.client = client
        self.covered: set[tuple[str, str, str]] = set()

    async def call(self, method: str, path: str, template: str | None = None, **kw) -> aiohttp.ClientResponse:
        template = template or path.split("?")[0]
        resp = await self.client.request(method, path, allow_redirects=False, **kw)
        body = await resp.read()
        op = PATHS[template][method.lower()]
        status = str(resp.status)
        assert status in op["responses"], f"{method} {path}: {status} is not documented ({body[:200]!r})"
        response = resolve(op["responses"][status])
        for header in response.get("headers", {}):
            assert header in resp.headers, f"{method} {path} {status}: no {header}"
        content = response.get("content", {})
        if method == "HEAD" or not content:
            assert method == "HEAD" or not body or status == "303", (method, path, status, body[:100])
        else:
            media = resp.content_type
            assert media in content, f"{method} {path} {status}: {media} is not documented"
            if media == "application/json":
                validate(json.loads(body), content[media]["schema"])
        self.covered.add((method, template, status))
        return resp


@pytest.fixture
async def seeded(client, db, settings):
    alice = await make_caller(db, "alice@example.com")
    table_dir = Path(settings.data_dir) / "tables"
    table_dir.mkdir(parents=True)
    (table_dir / "orders.csv").write_bytes(b"id,total\n1,10\n2,20\n")
    await tables.register(db, "orders", "tables/orders.csv", rows=2, public=True)
    return alice


def upload_form(name: str, data: bytes) -> aiohttp.FormData:
    fd = aiohttp.FormData()
    fd.add_field("file", io.BytesIO(data), filename=name, content_type="application/octet-stream")
    return fd


async def test_real_responses_of_every_operation_match_the_document(client, db, seeded, monkeypatch):
    alice = seeded
    r = Recorder(client)
    auth = alice.headers
    sample = (SAMPLES / "alice" / "3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl").read_bytes()
    for path in ("/api/me", "/api/me/profile", "/api/me/home-stats", "/api/sync/manifest", "/api/catalog/tables",
                 "/api/v2/catalog", "/api/memory/bundle", "/api/initial-workspace", "/api/welcome"):
        await r.call("GET", path, headers=auth)
        await r.call("GET", path)  # 401
    await r.call("GET", "/api/me/home-stats?window=7d", headers=auth)
    await r.call("GET", "/api/me/home-stats?window=nonsense", headers=auth)
    await r.call("GET", "/api/welcome?server_url=https://agnes.example", headers=auth)
    for path in ("/api/me/activity", "/api/me/sessions"):
        await r.call("GET", f"{path}?range=7d&tz=Europe/Prague", path, headers=auth)
        await r.call("GET", f"{path}?format=csv", path, headers=auth)
        await r.call("GET", f"{path}?tz=Not/AZone", path, headers=auth)
        await r.call("GET", path)
    await r.call("GET", "/api/me/sessions/nope", "/api/me/sessions/{session_id}", headers=auth)
    await r.call("GET", "/api/me/sessions/nope", "/api/me/sessions/{session_id}")

    json_h = {**auth, "Content-Type": "application/json"}
    await r.call("POST", "/api/me/onboarded", headers=json_h, data=b'{"source": "self_unmark", "onboarded": false}')
    await r.call("POST", "/api/me/onboarded", headers=json_h, data=b'{"source": "nope"}')
    await r.call("POST", "/api/me/onboarded", headers={**auth, "Content-Type": "text/plain"}, data=b"{}")
    await r.call("POST", "/api/me/onboarded", headers=json_h, data=io.BytesIO(b"x" * 2_000_000))
    await r.call("POST", "/api/me/onboarded", data=b"{}")
    await r.call("POST", "/api/me/timezone", headers=json_h, data=b'{"tz": "Asia/Kolkata"}')
    await r.call("POST", "/api/me/timezone", headers=json_h, data=b'{"tz": "Nowhere/Town"}')
    await r.call("POST", "/api/me/timezone", headers={**auth, "Content-Type": "text/plain"}, data=b"{}")
    await r.call("POST", "/api/me/timezone", headers=json_h, data=io.BytesIO(b"x" * 2_000_000))
    await r.call("POST", "/api/me/timezone", data=b"{}")
    await r.call("POST", "/api/upload/sessions", headers=auth, data=upload_form("s.jsonl", sample))
    await r.call("POST", "/api/upload/sessions", headers=auth, data=upload_form("../s.jsonl", sample))
    await r.call("POST", "/api/upload/sessions", data=upload_form("s.jsonl", sample))
    await r.call("POST", "/api/upload/local-md", headers=json_h, data=b'{"content": "# notes"}')
    await r.call("POST", "/api/upload/local-md", headers=json_h, data=b'{"content": 1}')
    await r.call("POST", "/api/upload/local-md", headers={**auth, "Content-Type": "text/plain"}, data=b"x")
    await r.call("POST", "/api/upload/local-md", headers=json_h, data=io.BytesIO(b"x" * 2_000_000))
    await r.call("POST", "/api/upload/local-md", data=b"{}")
    confirm = b'{"duration_ms": 812, "errors": 1, "direct_tables": {"added": 1}, "data_packages": {}}'
    await r.call("POST", "/api/sync/pull-confirm", headers=json_h, data=confirm)
    await r.call("POST", "/api/sync/pull-confirm", headers=json_h, data=b'{"errors": -1}')
    await r.call("POST", "/api/sync/pull-confirm", headers=json_h, data=b'{"errors": 1.5}')
    await r.call("POST", "/api/sync/pull-confirm", headers=json_h, data=b'{"errors": 2.0, "duration_ms": 1e3}')
    await r.call("POST", "/api/sync/pull-confirm", headers={**auth, "Content-Type": "text/plain"}, data=confirm)
    await r.call("POST", "/api/sync/pull-confirm", headers=json_h, data=io.BytesIO(b"x" * 100_000))
    await r.call("POST", "/api/sync/pull-confirm", data=confirm)
    await r.call("GET", "/api/me/profile", headers={**auth, "User-Agent": "agnes/0.84.8 (darwin)"})
    await client.app[keys.DB].settle()
    await r.call("GET", "/api/me", headers=auth)  # with client and last_pull filled in
    await client.app[keys.WORKER].drain()
    await r.call("GET", "/api/me/sessions/3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f", "/api/me/sessions/{session_id}",
                 headers=auth)

    ops = await make_caller(db, "ops@example.com")  # an operator (conftest's admin_emails)
    ops_json = {**ops.headers, "Content-Type": "application/json"}
    for path, bad in (("/api/admin/reprocess", b'{"users": 1}'), ("/api/admin/quarantine/retry", b'{"id": "x"}')):
        await r.call("POST", path, headers=ops_json, data=b"{}")
        await r.call("POST", path, headers=ops_json, data=bad)
        await r.call("POST", path, headers={**ops.headers, "Content-Type": "text/plain"}, data=b"x")
        await r.call("POST", path, headers=ops_json, data=io.BytesIO(b"x" * 100_000))
        await r.call("POST", path, headers=json_h, data=b"{}")  # not an operator: 403
        await r.call("POST", path, data=b"{}")
    await r.call("POST", "/api/admin/reprocess", headers=ops_json, data=b'{"user": "nobody@example.com"}')
    for headers in (ops.headers, auth, {}):
        await r.call("GET", "/api/admin/quarantine", headers=headers)
    for headers in (ops.headers, auth, {}):
        await r.call("GET", "/api/admin/usage?range=30d", "/api/admin/usage", headers=headers)
    for query in ("format=csv&table=analysts", "format=csv&table=tools", "format=csv", "format=csv&table=nope"):
        await r.call("GET", f"/api/admin/usage?{query}", "/api/admin/usage", headers=ops.headers)
    await r.call("POST", "/api/admin/quarantine/retry", headers=ops.headers, data={"id": "1"})  # a form: 303

    download = "/api/data/{table_id}/download"
    for method in ("GET", "HEAD"):
        await r.call(method, "/api/data/orders/download", download, headers=auth)
        await r.call(method, "/api/data/orders/download", download, headers={**auth, "Range": "bytes=0-3"})
        await r.call(method, "/api/data/orders/download", download, headers={**auth, "Range": "bytes=500-600"})
        await r.call(method, "/api/data/nope/download", download, headers=auth)
        await r.call(method, "/api/data/orders/download", download)

    for path in ("/cli/latest", "/healthz", "/api/health", "/readyz", "/metrics"):
        await r.call("GET", path)
    await r.call("GET", "/api/openapi.json")  # 401: every /api/* route identifies a user
    await r.call("GET", "/api/openapi.json", headers=auth)
    assert json.loads(await (await client.get("/api/openapi.json", headers=auth)).read()) == DOCUMENT
    monkeypatch.setattr(client.app[keys.WORKER], "health", lambda: "stopped tasks: ingest-tick")
    await r.call("GET", "/readyz")

    # Cookie sign-in: a form post without the CSRF token is refused, with it the page is sent back home.
    await client.post("/login", data={"token": alice.token}, allow_redirects=False)
    csrf = CSRF_RE.search(await (await client.get("/home")).text()).group(1)
    await r.call("POST", "/api/me/onboarded", data={"source": "self_acknowledged", "onboarded": "true"})
    await r.call("POST", "/api/upload/sessions", data=upload_form("s.jsonl", sample))
    await r.call("POST", "/api/upload/local-md", json={"content": "x"})
    await r.call("POST", "/api/me/timezone", json={"tz": "UTC"})  # no CSRF token: 403
    await r.call("POST", "/api/sync/pull-confirm", json={"errors": 0})
    await r.call("POST", "/api/sync/pull-confirm", json={"errors": 0}, headers={"X-CSRF-Token": csrf})
    await r.call("POST", "/api/me/onboarded", data={"source": "self_acknowledged", "onboarded": "true",
                                                    "csrf_token": csrf})

    calls = {(m, p) for m, p, _ in r.covered}
    assert calls == documented(), documented() - calls
    statuses = {(m, p, s) for p, ops in PATHS.items() for m, op in ops.items() for s in op["responses"]}
    never_seen = {(m.lower(), p, s) for m, p, s in r.covered} ^ statuses
    # Documented but not provoked here: 404 of a user deleted mid-request, 413 of an upload (test_hostile_input),
    # 503 of a write meeting another process's lock or a full disk (test_faults).
    writes_503 = {("post", p, "503") for p, ops in PATHS.items() for m, op in ops.items() if m == "post"
                  and "503" in op["responses"]}
    assert never_seen == {("post", "/api/me/onboarded", "404"), ("post", "/api/upload/sessions", "413"),
                          *writes_503}, never_seen


# --- schemathesis: generated requests against the real server -------------------------------------------

SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
# The test sends the bearer token itself; unknown query parameters are ignored by design (HTTP habit),
# so requests made "invalid" only by an extra parameter are not generated.
SCHEMA.config.generation.update(allow_extra_parameters=False, with_security_parameters=False)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    home = tmp_path_factory.mktemp("openapi-live")
    tokens = seed(home, ["alice@example.com"])
    seed_table(home, "orders", b"id,total\n1,10\n", public=True)
    server = Server(home, AGNES_LOG_LEVEL="WARNING", AGNES_PARSE_WORKERS="0")
    try:
        server.wait_ready()
        yield server.base, {"Authorization": f"Bearer {tokens['alice@example.com']}"}
    finally:
        server.stop()
        server.reap_group()


@SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_generated_requests_get_documented_answers(case, live):
    base, auth = live
    excluded = []
    if case.operation.label == "POST /api/upload/sessions":
        # A multipart part is bytes: the "boolean" schemathesis sends as a wrong-typed file is the
        # five bytes `false`, a perfectly good (if empty) transcript.
        excluded.append(schemathesis.checks.negative_data_rejection)
    if case.operation.label in ("POST /api/me/timezone", "GET /api/me/activity", "GET /api/me/sessions"):
        # Any string is schema-valid as a zone; only the names in the zone database are zones (400 otherwise).
        excluded.append(schemathesis.checks.positive_data_acceptance)
    case.call_and_validate(base_url=base, headers=auth, excluded_checks=excluded)
