"""A faithful stand-in for the `agnes` command-line client, written from SPEC.md "Wire compatibility".

It does on the wire exactly what the real client does: bearer token on every call, no
redirects followed (any non-2xx is a failure), the HEAD probe with its Range fallback,
four parallel ranges for files over 50 MiB, the md5 check, and the push/onboarded/init calls.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

CHUNK_THRESHOLD = 50 * 1024 * 1024
PARALLEL_RANGES = 4


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


class AgnesClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str, *, version: str = "1.4.0",
                 head_works: bool = True) -> None:
        self.session = session
        self.base = base_url.rstrip("/")
        self.token = token
        self.version = version
        self.head_works = head_works
        self.log: list[tuple[str, str, int]] = []

    async def _call(self, method: str, path: str, *, auth: bool = True, ok=(200, 201, 204), **kw):
        headers = dict(kw.pop("headers", {}))
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
        result = PullResult()
        _, body = await self._call("GET", "/api/sync/manifest")
        import json

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

    async def push(self, transcript: Path, local_md: str | None = None) -> str:
        """One upload per transcript; returns sent | dropped | requeued as the real client decides."""
        form = aiohttp.FormData()
        form.add_field("file", transcript.read_bytes(), filename=transcript.name,
                       content_type="application/octet-stream")
        try:
            resp, body = await self._call("POST", "/api/upload/sessions", data=form, ok=(200,))
        except ClientFailure as exc:
            if exc.status in (400, 413):
                return "dropped"
            if exc.status >= 500 or exc.status in (408, 429):
                return "requeued"
            raise
        import json

        reply = json.loads(body)
        assert reply == {"status": "ok", "filename": transcript.name, "size": transcript.stat().st_size}
        if local_md is not None:
            await self._call("POST", "/api/upload/local-md", json={"content": local_md}, ok=(200,))
        return "sent"

    async def onboarded(self, on: bool, source: str | None = None) -> bool:
        import json

        body = {"source": source or "self_acknowledged", "onboarded": True} if on else \
            {"source": "self_unmark", "onboarded": False}
        _, raw = await self._call("POST", "/api/me/onboarded", json=body, ok=(200,))
        return json.loads(raw)["onboarded"]

    async def onboarded_status(self) -> bool:
        import json

        try:
            _, raw = await self._call("GET", "/api/me/profile", ok=(200,))
            value = json.loads(raw)["onboarded"]
            assert isinstance(value, bool)
            return value
        except ClientFailure:
            _, page = await self._call("GET", "/home", ok=(200,))
            return b"Mark me as offboarded" in page

    async def init(self, server_url: str) -> str:
        """agnes init: prove the token, ask for a workspace, fetch CLAUDE.md, pull, get onboarded."""
        import json

        await self._call("GET", "/api/catalog/tables")
        try:
            await self._call("GET", "/api/initial-workspace")
        except ClientFailure as exc:
            if exc.status != 404:
                raise
        _, raw = await self._call("GET", "/api/welcome", params={"server_url": server_url})
        claude_md = json.loads(raw)["content"]
        await self.pull()
        assert await self.onboarded(True, "agnes_init") is True
        return claude_md


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())
