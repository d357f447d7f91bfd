"""Loopback HTTP load: wrk when installed, else an asyncio (aiohttp) client with the same shape.

    python bench/loadgen.py URL [--connections 32] [--seconds 10] [--header 'Authorization: Bearer T']

Prints one JSON object: requests per second, p50 / p90 / p99 latency in ms, errors, tool used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import time


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_wrk(url: str, connections: int, seconds: float, headers: list[str]) -> dict:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = {p: _ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"tool": "wrk", "rps": rps, "p50_ms": pct.get("50"), "p90_ms": pct.get("90"), "p99_ms": pct.get("99"),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(1) if errors else None}


async def _run_async(url: str, connections: int, seconds: float, headers: list[str]) -> dict:
    import aiohttp  # noqa: PLC0415

    hdrs = dict(h.split(": ", 1) for h in headers)
    latencies: list[float] = []
    bad = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, headers=hdrs) as session:
        async def worker() -> None:
            nonlocal bad
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                async with session.get(url, allow_redirects=False) as resp:
                    await resp.read()
                    if resp.status >= 400:
                        bad += 1
                latencies.append(time.perf_counter() - t)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        spent = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 3)

    return {"tool": "asyncio", "rps": round(len(latencies) / spent, 1), "p50_ms": pct(0.5), "p90_ms": pct(0.9),
            "p99_ms": pct(0.99), "non_2xx": bad}


def run(url: str, connections: int = 32, seconds: float = 10, headers: list[str] | None = None,
        force_async: bool = False) -> dict:
    headers = headers or []
    if shutil.which("wrk") and not force_async:
        return run_wrk(url, connections, seconds, headers)
    return asyncio.run(_run_async(url, connections, seconds, headers))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--asyncio", action="store_true", help="use the asyncio client even when wrk is installed")
    args = ap.parse_args()
    print(json.dumps(run(args.url, args.connections, args.seconds, args.header, args.asyncio)))


if __name__ == "__main__":
    main()
