"""Loopback load test of a running Agnes Home: mixed reads and uploads, then a check that no upload was lost.

    agnes-home users add load1@example.com --onboarded
    agnes-home tokens issue load1@example.com | tail -1 >> tokens.txt    # one line per user
    python bench/load.py --base-url http://127.0.0.1:8080 --tokens-file tokens.txt --duration 30 --connections 50

Each connection loops over a weighted mix of GET /home, GET /api/me/home-stats, GET
/api/sync/manifest, GET /api/me and POST /api/upload/sessions for one of the users, for
--duration seconds. Every upload is a new session with exactly one prompt and one
assistant message of TOKENS_PER_UPLOAD tokens, timestamped now; so once the worker has
processed them, each user's 24h sessions, prompts and tokens have grown by exactly the
number of uploads answered 200 (the users must have no other activity during the run).
The script polls for that up to --settle seconds, then prints a JSON report: requests by
route and status, latency percentiles (overall and per route), 5xx and transport errors,
uploads sent / answered 200 / found processed / lost. Exit status 1 when anything was a
5xx or a transport error, or an upload answered 200 was not processed.

Only loopback addresses are accepted unless --allow-remote is given: this tool saturates
the server it points at.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timezone
from urllib.parse import urlsplit

import aiohttp

TOKENS_PER_UPLOAD = (3, 5, 7, 11)  # input, output, cache read, cache creation: total 26
DEFAULT_MIX = "home=2,home-stats=4,manifest=2,me=1,upload=2"
ROUTES = {
    "home": ("GET", "/home"),
    "home-stats": ("GET", "/api/me/home-stats"),
    "manifest": ("GET", "/api/sync/manifest"),
    "me": ("GET", "/api/me"),
    "upload": ("POST", "/api/upload/sessions"),
}


def transcript(session_id: str, now: datetime) -> bytes:
    """One session: one typed prompt and one assistant message, both timestamped now."""
    ts = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    i, o, cr, cc = TOKENS_PER_UPLOAD
    lines = [
        {"type": "user", "uuid": f"{session_id}-u", "sessionId": session_id, "timestamp": ts,
         "cwd": f"/home/load/{session_id[:8]}", "message": {"role": "user", "content": "load test prompt"}},
        {"type": "assistant", "uuid": f"{session_id}-a", "sessionId": session_id, "timestamp": ts,
         "message": {"id": f"msg_{session_id}", "role": "assistant", "model": "claude-load",
                     "content": [{"type": "text", "text": "ok"}],
                     "usage": {"input_tokens": i, "output_tokens": o, "cache_read_input_tokens": cr,
                               "cache_creation_input_tokens": cc}}},
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list, in the list's unit."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarise(latencies: list[float]) -> dict[str, float | None]:
    values = sorted(latencies)
    ms = lambda v: None if v is None else round(v * 1000, 2)  # noqa: E731
    return {"p50_ms": ms(percentile(values, 50)), "p95_ms": ms(percentile(values, 95)),
            "p99_ms": ms(percentile(values, 99)), "max_ms": ms(values[-1] if values else None)}


def parse_mix(text: str) -> list[tuple[str, int]]:
    mix = []
    for item in text.split(","):
        name, _, weight = item.partition("=")
        if name not in ROUTES or not weight.isdigit():
            raise SystemExit(f"bad --mix item {item!r}: use name=weight with names {', '.join(ROUTES)}")
        mix.append((name, int(weight)))
    return mix


class Load:
    def __init__(self, args: argparse.Namespace, tokens: list[str]) -> None:
        self.base = args.base_url.rstrip("/")
        self.tokens = tokens
        self.duration = args.duration
        self.connections = args.connections
        self.settle = args.settle
        self.rng = random.Random(args.seed)
        mix = parse_mix(args.mix)
        self.names = [n for n, _ in mix]
        self.weights = [w for _, w in mix]
        self.statuses: dict[str, Counter[str]] = defaultdict(Counter)
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.transport_errors: Counter[str] = Counter()
        self.uploads_sent = 0
        self.uploads_ok: Counter[str] = Counter()  # token -> uploads answered 200

    def headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def stats(self, session: aiohttp.ClientSession, token: str) -> tuple[int, int, int]:
        async with session.get(f"{self.base}/api/me/home-stats?window=24h", headers=self.headers(token)) as resp:
            if resp.status != 200:
                raise SystemExit(f"home-stats answered {resp.status}: {await resp.text()}")
            body = await resp.json()
        return body["sessions"], body["prompts"], body["tokens"]["total"]

    async def one(self, session: aiohttp.ClientSession, rng: random.Random) -> None:
        name = rng.choices(self.names, self.weights)[0]
        token = rng.choice(self.tokens)
        method, path = ROUTES[name]
        kwargs: dict = {"headers": self.headers(token), "allow_redirects": False}
        if name == "home-stats":
            path += "?window=" + rng.choice(("24h", "7d"))
        elif name == "upload":
            session_id = str(uuid.uuid4())  # unique across runs too: a repeated name would replace a file
            form = aiohttp.FormData()
            form.add_field("file", transcript(session_id, datetime.now(timezone.utc)),
                           filename=f"load-{session_id}.jsonl", content_type="application/octet-stream")
            kwargs["data"] = form
            self.uploads_sent += 1
        label = f"{method} {ROUTES[name][1]}"
        started = time.perf_counter()
        try:
            async with session.request(method, self.base + path, **kwargs) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.transport_errors[f"{label}: {type(exc).__name__}"] += 1
            return
        self.latencies[label].append(time.perf_counter() - started)
        self.statuses[label][str(status)] += 1
        if name == "upload" and status == 200:
            self.uploads_ok[token] += 1

    async def connection(self, session: aiohttp.ClientSession, index: int, deadline: float) -> None:
        rng = random.Random(self.rng.getrandbits(64) ^ index)
        while time.monotonic() < deadline:
            await self.one(session, rng)

    async def run(self) -> dict:
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(limit=self.connections, force_close=False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            before = {t: await self.stats(session, t) for t in self.tokens}
            started = time.monotonic()
            deadline = started + self.duration
            await asyncio.gather(*(self.connection(session, i, deadline) for i in range(self.connections)))
            elapsed = time.monotonic() - started
            processed, settle_s = await self.wait_for_uploads(session, before)
        return self.report(elapsed, processed, settle_s)

    async def wait_for_uploads(self, session: aiohttp.ClientSession,
                               before: dict[str, tuple[int, int, int]]) -> tuple[int, float]:
        """Poll until every user's 24h numbers grew by exactly their uploads answered 200."""
        started = time.monotonic()
        per_upload = sum(TOKENS_PER_UPLOAD)
        while True:
            found = 0
            done = True
            for token, (sessions, prompts, tokens) in before.items():
                now_s, now_p, now_t = await self.stats(session, token)
                expected = self.uploads_ok[token]
                # A user's three numbers move together: one transaction writes a file's activity.
                found += min(now_s - sessions, now_p - prompts, (now_t - tokens) // per_upload, expected)
                done &= (now_s - sessions, now_p - prompts, now_t - tokens) == (
                    expected, expected, expected * per_upload)
            if done or time.monotonic() - started > self.settle:
                return found, time.monotonic() - started
            await asyncio.sleep(0.2)

    def report(self, elapsed: float, processed: int, settle_s: float) -> dict:
        all_latencies = [v for values in self.latencies.values() for v in values]
        total = sum(len(v) for v in self.latencies.values())
        server_errors = sum(n for counts in self.statuses.values() for s, n in counts.items() if s.startswith("5"))
        ok_uploads = sum(self.uploads_ok.values())
        report = {
            "base_url": self.base,
            "duration_s": round(elapsed, 2),
            "connections": self.connections,
            "users": len(self.tokens),
            "requests": total,
            "requests_per_s": round(total / elapsed, 1) if elapsed else 0.0,
            "by_route": {label: {"count": len(self.latencies[label]), "statuses": dict(self.statuses[label]),
                                 **summarise(self.latencies[label])} for label in sorted(self.latencies)},
            "latency": summarise(all_latencies),
            "server_errors": server_errors,
            "transport_errors": dict(self.transport_errors),
            "uploads": {"sent": self.uploads_sent, "ok": ok_uploads, "processed": processed,
                        "lost": ok_uploads - processed, "settle_s": round(settle_s, 2)},
        }
        report["ok"] = server_errors == 0 and not self.transport_errors and processed == ok_uploads
        return report


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8080")
    parser.add_argument("--token", action="append", default=[], help="a user's token (repeat for several users)")
    parser.add_argument("--tokens-file", help="file with one token per line")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    parser.add_argument("--connections", type=int, default=50, help="concurrent connections (default 50)")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="seconds to wait afterwards for the uploads to be processed (default 60)")
    parser.add_argument("--mix", default=DEFAULT_MIX, help=f"route weights (default {DEFAULT_MIX})")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --base-url")
    args = parser.parse_args(argv)
    tokens = list(args.token)
    if args.tokens_file:
        with open(args.tokens_file, encoding="utf-8") as fh:
            tokens += [line.strip() for line in fh if line.strip()]
    if not tokens:
        parser.error("give at least one --token or a --tokens-file")
    if not args.allow_remote and not is_loopback(args.base_url):
        parser.error(f"{args.base_url} is not a loopback address; pass --allow-remote if you mean it")
    report = asyncio.run(Load(args, tokens).run())
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
