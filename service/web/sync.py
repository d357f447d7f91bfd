"""What the `agnes` client pulls: the per-user manifest, table downloads, memory rules, welcome text."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import stat
from datetime import datetime, timezone
from pathlib import Path

import jinja2
import msgspec
from aiohttp import web

from .. import keys
from .base import decode_json_body, json
from .auth import public
from .errors import AppError
from ..redact import redact_text
from ..store import tables, users
from ..timeutil import to_api, utcnow
from .base import server_url
from .download import file_response

logger = logging.getLogger(__name__)

STAMP_WAIT = 1.0  # seconds the manifest waits for the last-pull stamp before answering anyway
MAX_LOCAL_MD = 1024 * 1024


class ManifestTable(msgspec.Struct):
    hash: str
    updated: str
    size_bytes: int
    rows: int
    query_mode: str
    source_type: str


class Manifest(msgspec.Struct):
    tables: dict[str, ManifestTable]
    assets: dict[str, str]
    server_time: str


class MemoryItem(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A memory rule; domain and category are optional keys (SPEC.md: `"domain"?`), left out when absent."""

    id: str
    title: str
    content: str
    domain: str | None = None
    category: str | None = None


class MemoryBundle(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False):
    mandatory: list[MemoryItem] = []
    approved: list[MemoryItem] = []


class LocalMd(msgspec.Struct, forbid_unknown_fields=True):
    content: str


def load_memory(path: str) -> MemoryBundle:
    """The operator's memory rules (YAML or JSON); ValueError with msgspec's $.path on a bad file."""
    if not path:
        return MemoryBundle()
    data = Path(path).read_bytes()
    try:
        return msgspec.yaml.decode(data, type=MemoryBundle)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValueError(str(exc)) from None


def private_reason(relative: Path) -> str | None:
    """Why a path under the data directory must never be published as a table, or None.

    The data directory also holds analysts' transcripts (sessions/), the cookie-signing key
    (secret_key: with it anyone could sign in as anyone) and temporary files (dot names).
    """
    parts = relative.parts
    if parts and parts[0] == "sessions":
        return "it is under sessions/, the analysts' transcripts"
    if parts == ("secret_key",):
        return "it is the key that signs sign-in cookies"
    if any(part.startswith(".") for part in parts):
        return "it is a hidden or temporary file"
    return None


def table_file(data_dir: str, relative: str) -> Path | None:
    """The table's file, or None when the stored path would leave the data directory or is private."""
    base = Path(data_dir).resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base) or path == base or private_reason(path.relative_to(base)):
        return None
    return path


def md5_file(path: Path) -> str:
    """Lowercase md5 hex of a whole file, read in bounded chunks (the client checks exactly this)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


async def _manifest_entry(request: web.Request, table: tables.Table) -> ManifestTable | None:
    settings = request.app[keys.SETTINGS]
    path = table_file(settings.data_dir, table.path)
    try:
        st = path.stat() if path is not None else None
    except OSError:
        st = None
    # One table the operator broke (gone, now a directory, unreadable) must not fail every
    # analyst's pull: it is left out, and the log says which.
    if st is None or not stat.S_ISREG(st.st_mode):
        logger.warning("table %s: file %s is missing or not a regular file; left out of the manifest",
                       table.id, table.path)
        return None
    md5 = table.md5
    if md5 is None or (table.hash_size, table.hash_mtime_ns) != (st.st_size, st.st_mtime_ns):
        # Only a new or changed file is read; the hash is cached by (path, size, mtime).
        try:
            md5 = await asyncio.to_thread(md5_file, path)
        except OSError as exc:
            logger.warning("table %s: file %s cannot be read (%s); left out of the manifest",
                           table.id, table.path, exc.strerror or exc)
            return None
        tables.cache_hash(request.app[keys.DB], table.id, md5, st.st_size, st.st_mtime_ns)
    updated = datetime.fromtimestamp(st.st_mtime, timezone.utc)
    return ManifestTable(hash=md5, updated=to_api(updated), size_bytes=st.st_size, rows=table.rows or 0,
                         query_mode=table.query_mode, source_type=table.source_type)


async def manifest(request: web.Request) -> web.Response:
    """GET /api/sync/manifest: the caller's readable tables; stamps users.last_pull_at.

    Only a GET with a bearer token is a pull (what `agnes pull` sends): not a HEAD, which fetches
    nothing, and not a browser's cookie, which another site could make it send.
    """
    user = request[keys.USER]
    app = request.app
    pulled = request.method == "GET" and request[keys.IDENTITY].method == "bearer"
    stamp = users.stamp_pull_later(app[keys.DB], user.id, app[keys.CLOCK]()) if pulled else None
    entries: dict[str, ManifestTable] = {}
    for table in await tables.readable(app[keys.DB], user.id):
        entry = await _manifest_entry(request, table)
        if entry is not None:
            entries[table.id] = entry
    # A locked database must not hold the pull up: wait briefly, then answer regardless.
    if stamp is not None:
        await asyncio.wait({stamp}, timeout=STAMP_WAIT)
    return json(Manifest(tables=entries, assets={}, server_time=to_api(utcnow())))


async def download(request: web.Request) -> web.StreamResponse:
    """GET/HEAD /api/data/{table_id}/download: the file, with single Range requests, ETag, no encoding."""
    table_id = request.match_info["table_id"]
    not_found = AppError(404, f"No table {table_id!r} is available to you.", "table_not_found")
    if not tables.valid_table_id(table_id):
        raise not_found
    table = await tables.readable_one(request.app[keys.DB], table_id, request[keys.USER].id)
    if table is None:
        raise not_found
    path = table_file(request.app[keys.SETTINGS].data_dir, table.path)
    if path is None or not path.is_file():
        raise not_found
    return file_response(request, path)


async def catalog(request: web.Request) -> web.Response:
    """GET /api/catalog/tables and /api/v2/catalog: the caller's tables (`agnes init` proves its token with
    the first, `agnes catalog` lists the second; each key it prints is there, `name` and `entity_type`
    are optional to it)."""
    found = await tables.readable(request.app[keys.DB], request[keys.USER].id)
    return json({"tables": [{"id": t.id, "rows": t.rows or 0, "query_mode": t.query_mode,
                             "source_type": t.source_type} for t in found]})


async def memory_bundle(request: web.Request) -> web.Response:
    return json(request.app[keys.MEMORY])


async def initial_workspace(request: web.Request) -> web.Response:
    raise AppError(404, "No initial workspace is configured.", "not_found")


_welcome_env = jinja2.Environment(  # plain text (Markdown) returned inside JSON: nothing to HTML-escape
    loader=jinja2.FileSystemLoader(str(Path(__file__).resolve().parents[2] / "templates")),
    autoescape=False, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


async def welcome(request: web.Request) -> web.Response:
    """GET /api/welcome?server_url=: the CLAUDE.md for the analyst's new workspace.

    `agnes init` (0.54.9 and 0.84.8 alike) never posts /api/me/onboarded: its first fetch of this text
    is what onboards the analyst (source agnes_init), and only when they have no onboarding record at
    all, since `agnes update` fetches it again at every Claude Code session start and must never undo
    `agnes onboarded off`. Only with a bearer token: another site can make a signed-in browser GET a URL.
    """
    url = request.query.get("server_url", "").strip()
    if not url.startswith(("http://", "https://")) or len(url) > 2048 or any(c in url for c in "\r\n\x00"):
        url = server_url(request)
    user = request[keys.USER]
    db = request.app[keys.DB]
    if (request.method == "GET" and request[keys.IDENTITY].method == "bearer" and not user.onboarded
            and not await users.has_onboarding_record(db, user.id)):
        if await users.onboard_first_time(db, user.id, "first GET /api/welcome"):
            logger.info("onboarded=True source=agnes_init (first /api/welcome)")
    text = _welcome_env.get_template("welcome.md").render(server_url=url, user=user)
    return json({"content": text})


async def upload_local_md(request: web.Request) -> web.Response:
    """POST /api/upload/local-md {"content": "..."}: keep the analyst's local CLAUDE.md, our tokens
    replaced as in transcripts (analysts document their setup there; the client redacts only JWTs)."""
    doc = await decode_json_body(request, LocalMd, limit=MAX_LOCAL_MD)
    redacted, count = redact_text(doc.content)
    request.app[keys.METRICS].redacted_tokens.inc(count)
    await tables.save_local_md(request.app[keys.DB], request[keys.USER].id, redacted)
    return json({"status": "ok", "size": len(doc.content.encode())})


@public
async def cli_latest(request: web.Request) -> web.Response:
    """GET /cli/latest: no published client version (the client treats null as "nothing newer")."""
    return json({"version": None})
