"""A faithful stand-in for the `agnes` command-line client, written from SPEC.md "Wire compatibility"
and from what releases 0.54.9 and 0.84.8 (upstream commit 3a73ef3ba) send.

It does on the wire exactly what the real client does: bearer token and `User-Agent: agnes/<version>
(<os>)` on every call, no redirects followed (any non-2xx is a failure), the HEAD probe with its Range
fallback, four parallel ranges for files over 50 MiB, the md5 check, and the push/onboarded/init calls.
Where the releases differ, ``version`` picks the behaviour:

- 0.84.8 ends a pull with ``POST /api/sync/pull-confirm``; ``push_workspace`` scans the workspace's
  Claude Code project folder (top-level ``*.jsonl`` only), skips files whose size it already sent,
  redacts JWT-shaped strings, asks ``GET /api/health`` once per run and gzips when the answer carries
  ``X-Agnes-Accepts: session-gzip``; it gives a transcript up for good on any 4xx but 401/408/429.
- 0.54.9 sends no confirm and no probe, and gives up on any 4xx but 408/429 (401 included).
- Neither sends ``POST /api/me/onboarded`` during ``init``; ``onboarded status`` falls back to /home
  and looks for ``class="offboard-strip"`` (0.84.8) or "Mark me as offboarded" (0.54.9).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

CHUNK_THRESHOLD = 50 * 1024 * 1024
PARALLEL_RANGES = 4
CURRENT, LEGACY = "0.84.8", "0.54.9"
# The client's own redaction (cli/lib/transcript_redact.py): JWT-shaped strings only, not agnes_pat_.
_JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")
JWT_SENTINEL = b"[REDACTED-JWT]"


def encode_workspace(workspace: str | Path) -> str:
    """Claude Code's project folder name: every non-alphanumeric character becomes '-', runs kept."""
    text = str(workspace).rstrip("/\\") or str(workspace)
    return re.sub(r"[^A-Za-z0-9]", "-", text)


class ClientFailure(Exception):
    """What the client would print and exit on: the server's `detail` when it sent one."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass
class PullResult:
    fetched: dict[str, bytes] = field(default_factory=dict)
    skipped_remote: list[str] = field(default_factory=list)
    memory: dict | None = None
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status)


@dataclass
class PushResult:
    sent: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)    # given up for good (the client's failed-log)
    requeued: list[str] = field(default_factory=list)   # tried again on the next push
    skipped_unchanged: int = 0
    gzip: bool = False


class AgnesClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str, *, version: str = LEGACY,
                 head_works: bool = True, os_name: str = "linux") -> None:
        self.session = session
        self.base = base_url.rstrip("/")
        self.token = token
        self.version = version
        self.head_works = head_works
        self.user_agent = f"agnes/{version} ({os_name})"
        self.log: list[tuple[str, str, int]] = []
        self.ledger: dict[str, int] = {}   # agnes-sessions-uploaded.txt: session id -> size sent
        self.failed: set[str] = set()      # agnes-sessions-failed.txt: never retried
        self.pull_errors: list[str] = []

    @property
    def current(self) -> bool:
        return _version(self.version) >= _version(CURRENT)

    async def _call(self, method: str, path: str, *, auth: bool = True, ok=(200, 201, 204), agent: bool = True,
                    **kw):
        headers = dict(kw.pop("headers", {}))
        if agent:  # the v2 catalog helper uses httpx directly: httpx's own User-Agent
            headers["User-Agent"] = self.user_agent
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        resp = await self.session.request(method, self.base + path, headers=headers, allow_redirects=False, **kw)
        body = await resp.read()
        self.log.append((method, path, resp.status))
        if resp.status not in ok:
            detail = ""
            try:
                detail = (await resp.json(content_type=None)).get("detail", "")
            except Exception:  # noqa: BLE001 - the real client prints whatever it got
                detail = body[:200].decode(errors="replace")
            raise ClientFailure(resp.status, detail)
        return resp, body

    async def preflight(self) -> None:
        """GET /cli/latest without auth; refuse to run when told this version is too old."""
        try:
            resp, body = await self._call("GET", "/cli/latest", auth=False, ok=(200, 404),
                                          timeout=aiohttp.ClientTimeout(total=3))
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return
        latest, minimum = resp.headers.get("X-Agnes-Latest-Version"), resp.headers.get("X-Agnes-Min-Version")
        if latest and minimum and _version(self.version) < _version(minimum):
            raise ClientFailure(426, f"client {self.version} is older than the server's minimum {minimum}")

    async def pull(self) -> PullResult:
        await self.preflight()
        started = time.monotonic()
        result = PullResult()
        _, body = await self._call("GET", "/api/sync/manifest")
        tables = json.loads(body)["tables"]
        for table_id, meta in tables.items():
            if meta.get("query_mode") == "remote":
                result.skipped_remote.append(table_id)
                continue
            path = f"/api/data/{table_id}/download"
            size = await self._probe(path)
            if size > CHUNK_THRESHOLD:
                data = await self._parallel_ranges(path, size)
            else:
                _, data = await self._call("GET", path)
            if hashlib.md5(data).hexdigest() != meta.get("hash"):
                raise ClientFailure(0, f"{table_id}: md5 mismatch")
            result.fetched[table_id] = data
        _, body = await self._call("GET", "/api/memory/bundle")
        result.memory = json.loads(body)
        if self.current:
            # cli/lib/pull.py _emit_pull_confirm: fire-and-forget, any answer is ignored.
            payload = {"duration_ms": int((time.monotonic() - started) * 1000),
                       "direct_tables": {"added": len(result.fetched), "updated": 0, "removed": 0},
                       "data_packages": {"added": 0, "updated": 0, "removed": 0},
                       "memory_domains": {"added": 0, "updated": 0, "removed": 0},
                       "errors": len(self.pull_errors)}
            try:
                await self._call("POST", "/api/sync/pull-confirm", json=payload, ok=range(100, 600))
            except aiohttp.ClientError:
                pass
        result.requests = list(self.log)
        return result

    async def _probe(self, path: str) -> int:
        if self.head_works:
            try:
                resp, _ = await self._call("HEAD", path)
                if "Content-Length" in resp.headers and resp.headers.get("Accept-Ranges") == "bytes":
                    return int(resp.headers["Content-Length"])
            except ClientFailure:
                pass
        resp, body = await self._call("GET", path, headers={"Range": "bytes=0-0"}, ok=(206,))
        assert len(body) == 1
        return int(resp.headers["Content-Range"].rsplit("/", 1)[1])

    async def _parallel_ranges(self, path: str, size: int) -> bytes:
        step = -(-size // PARALLEL_RANGES)
        spans = [(start, min(size, start + step) - 1) for start in range(0, size, step)]

        async def one(start: int, end: int) -> bytes:
            resp, body = await self._call("GET", path, headers={"Range": f"bytes={start}-{end}"}, ok=(206,))
            assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{size}"
            if "Content-Encoding" in resp.headers:
                raise ClientFailure(0, "unexpected Content-Encoding")
            return body

        return b"".join(await asyncio.gather(*(one(s, e) for s, e in spans)))

    def gives_up_on(self, status: int) -> bool:
        """Whether this release drops a transcript for good on this answer (push.py _is_permanent_failure)."""
        transient = (401, 408, 429) if self.current else (408, 429)
        return 400 <= status < 500 and status not in transient

    async def _upload(self, name: str, payload: bytes) -> tuple[int, dict | None]:
        form = aiohttp.FormData()
        form.add_field("file", payload, filename=name, content_type="application/octet-stream")
        try:
            _, body = await self._call("POST", "/api/upload/sessions", data=form, ok=(200,))
        except ClientFailure as exc:
            return exc.status, None
        return 200, json.loads(body)

    async def push(self, transcript: Path, local_md: str | None = None) -> str:
        """One upload of one transcript as sent bytes; returns sent | dropped | requeued as the client decides."""
        status, reply = await self._upload(transcript.name, transcript.read_bytes())
        if status != 200:
            return "dropped" if self.gives_up_on(status) else "requeued"
        assert reply == {"status": "ok", "filename": transcript.name, "size": transcript.stat().st_size}
        if local_md is not None:
            await self._call("POST", "/api/upload/local-md", json={"content": local_md}, ok=(200,))
        return "sent"

    async def accepts_gzip(self) -> bool:
        """push.py _server_accepts_gzip: one probe per run; any failure means plain uploads."""
        try:
            resp, _ = await self._call("GET", "/api/health", ok=(200,))
        except (ClientFailure, aiohttp.ClientError):
            return False
        caps = resp.headers.get("X-Agnes-Accepts", "")
        return "session-gzip" in [c.strip() for c in caps.split(",")]

    async def push_workspace(self, projects_root: Path, workspace: Path, local_md: str | None = None) -> PushResult:
        """0.84.8's `agnes push`: the workspace's project folder, top-level *.jsonl only (subagent files
        under <session>/subagents/ are never sent), ledger by size, JWT redaction, gzip when offered."""
        assert self.current, "0.54.9 pushes what its hook queued: use push()"
        folder = projects_root / encode_workspace(workspace)
        result = PushResult()
        todo = []
        for path in sorted(folder.glob("*.jsonl"), key=lambda p: p.name):
            sid, size = path.stem, path.stat().st_size
            if sid in self.failed:
                continue
            if self.ledger.get(sid) == size:
                result.skipped_unchanged += 1
                continue
            todo.append((sid, path, size))
        result.gzip = bool(todo) and await self.accepts_gzip()
        for sid, path, size in todo:
            payload, name = _JWT.sub(JWT_SENTINEL, path.read_bytes()), path.name
            if result.gzip:
                payload, name = gzip.compress(payload), name + ".gz"
            status, _ = await self._upload(name, payload)
            if status == 200:
                self.ledger[sid] = size
                result.sent.append(path.name)
            elif self.gives_up_on(status):
                self.failed.add(sid)
                result.dropped.append(path.name)
            else:
                result.requeued.append(path.name)
        if local_md is not None:
            await self._call("POST", "/api/upload/local-md", json={"content": local_md}, ok=(200,))
        return result

    async def onboarded(self, on: bool, source: str | None = None) -> bool:
        body = {"source": source or "self_acknowledged", "onboarded": True} if on else \
            {"source": "self_unmark", "onboarded": False}
        _, raw = await self._call("POST", "/api/me/onboarded", json=body, ok=(200,))
        return json.loads(raw)["onboarded"]

    async def onboarded_status(self) -> bool:
        try:
            _, raw = await self._call("GET", "/api/me/profile", ok=(200,))
            value = json.loads(raw)["onboarded"]
            assert isinstance(value, bool)
            return value
        except ClientFailure:
            _, page = await self._call("GET", "/home", ok=(200,))
            if self.current:
                return b'class="offboard-strip"' in page
            return b"Step 1 &amp; Step 2 done" in page or b"Mark me as offboarded" in page

    async def welcome(self, server_url: str) -> str:
        _, raw = await self._call("GET", "/api/welcome", params={"server_url": server_url})
        return json.loads(raw)["content"]

    async def init(self, server_url: str) -> str:
        """agnes init: prove the token, ask for a workspace, fetch CLAUDE.md, pull. Neither release posts
        /api/me/onboarded here: the service onboards on the first bearer GET /api/welcome."""
        await self._call("GET", "/api/catalog/tables")
        try:
            await self._call("GET", "/api/initial-workspace")
        except ClientFailure as exc:
            if exc.status != 404:
                raise
        claude_md = await self.welcome(server_url)
        await self.pull()
        return claude_md

    async def update_quiet(self, server_url: str, projects_root: Path, workspace: Path) -> PushResult:
        """0.84.8's `agnes update --quiet` (its SessionStart hook, every session): CLAUDE.md from
        /api/welcome, a catch-up push, then a pull."""
        assert self.current
        await self.welcome(server_url)
        pushed = await self.push_workspace(projects_root, workspace)
        await self.pull()
        return pushed

    async def catalog(self) -> tuple[int, dict | None]:
        """`agnes catalog` (cli/v2_client.py): httpx's own User-Agent; exit 5 on any failure."""
        try:
            _, raw = await self._call("GET", "/api/v2/catalog", params={"refresh": "0"}, agent=False, ok=(200,))
        except ClientFailure:
            return 5, None
        return 0, json.loads(raw)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())
