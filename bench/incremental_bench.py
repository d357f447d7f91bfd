"""Incremental ingest (issue 24): a transcript of ~50 MB that then grows by 0.5 MB per pass for 30
passes, against one full pass over the final file; CPU of this process (time.process_time: the
event loop, the database threads and the parse, which runs in a thread here), process start-up
excluded.

    python bench/incremental_bench.py [--work DIR] [--mb 50] [--step-mb 0.5] [--passes 30]

Three paths, each on a fresh database:
- processor: Processor.process on a registered file (what `agnes-home ingest` and every path share);
- watch: the file in the watched directory, each pass one scan of it and the queue drained
  (the watch priority's 5 s delay is set to 0 here: it is wall time, not work);
- upload: the whole file POSTed to /api/upload/sessions each pass (as `agnes push` re-sends a grown
  session), then the queue drained. Receiving the body (the request, whose client runs in this
  process too) is reported apart from what follows it (change check, parse, writes).
Growth cuts are byte offsets, so a pass usually ends inside a line (and the next one starts there).
Targets: the 30 passes together at most 3x one full pass over the final file, and one pass under 5%.
The full pass is the median of three, each on a fresh database.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import aiohttp  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

import common  # noqa: E402
import corpus  # noqa: E402
from service import keys  # noqa: E402
from service.app import create_app  # noqa: E402
from service.config import load_settings  # noqa: E402
from service.db import Database  # noqa: E402
from service.ingest import worker as worker_module  # noqa: E402
from service.ingest.processor import Processor  # noqa: E402
from service.migrations import migrate  # noqa: E402
from service.store import ingest as store  # noqa: E402
from service.store import users  # noqa: E402

NOW = datetime(2025, 12, 1, tzinfo=timezone.utc)
FULL_RUNS = 3  # the full pass over the final file: the median of this many (this machine is noisy)


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def transcript(work: Path, mb: float, step_mb: float, passes: int) -> tuple[bytes, list[int]]:
    """The final file's bytes and the size after each step (first: ~mb, at a line's end)."""
    total_mb = mb + step_mb * passes + 1
    path = work / "source" / "big.jsonl"
    if not path.exists() or path.stat().st_size < total_mb * 1e6:
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = random.Random(24)
        pool = corpus._text_pool(random.Random(25), 600_000)
        corpus.write_session(rng, pool, str(path), "big-session", "/home/analyst/big",
                             datetime(2025, 10, 1, tzinfo=timezone.utc), int(total_mb * 1e6))
    data = path.read_bytes()
    first = data.index(b"\n", int(mb * 1e6)) + 1
    sizes = [first + int(step_mb * 1e6 * i) for i in range(passes + 1)]
    return data[:sizes[-1]], sizes


async def open_db(path: Path) -> Database:
    db = Database(str(path))
    await db.open()
    await migrate(db.writer)
    return db


def cpu() -> float:
    return time.process_time()


async def grow_timed(path: Path, data: bytes, steps: list[int], one_pass) -> list[float]:
    """Append ``data`` to ``path`` up to each size in ``steps``, each followed by ``one_pass()``:
    the process CPU seconds of each pass."""
    spent = []
    written = 0
    for size in steps:
        with open(path, "ab") as fh:
            fh.write(data[written:size])
        written = size
        t = cpu()
        await one_pass()
        spent.append(cpu() - t)
    return spent


async def processor_path(work: Path, data: bytes, sizes: list[int]) -> dict:
    async def run(name: str, steps: list[int]) -> list[float]:
        db = await open_db(work / f"{name}.db")
        user = await users.add_user(db, "analyst@example.com", "Analyst", True)
        processor = Processor(db, workers=0, clock=lambda: NOW)
        path = work / name / "big.jsonl"
        path.parent.mkdir()
        path.write_bytes(b"")
        file_id = await store.register_file(db, user.id, str(path), "cli", NOW)
        async def one_pass() -> None:
            outcome = await processor.process(file_id)
            assert outcome.status == "processed", outcome

        spent = await grow_timed(path, data, steps, one_pass)
        await db.close()
        return spent

    return await full_and_grown(run, "processor", sizes)


async def watch_path(work: Path, data: bytes, sizes: list[int]) -> dict:
    worker_module.PRIORITY_DELAY[worker_module.WATCH] = 0.0

    async def run(name: str, steps: list[int]) -> list[float]:
        root = work / name
        (root / "analyst").mkdir(parents=True)
        settings = load_settings(environ={}, db_path=str(work / f"{name}.db"), data_dir=str(work / f"{name}-data"),
                                 secret_key="bench", parse_workers=0, session_dir=str(root), scan_interval=3600)
        db = await open_db(work / f"{name}.db")
        await users.add_user(db, "analyst@example.com", "Analyst", True)
        worker = worker_module.IngestWorker(db, settings, clock=lambda: NOW)
        worker.start()
        await asyncio.wait_for(worker.ticked.wait(), 30)  # the first tick (an empty scan) is done
        path = root / "analyst" / "big.jsonl"
        async def one_pass() -> None:
            assert await worker.scan() == 1
            await worker.drain()

        spent = await grow_timed(path, data, steps, one_pass)
        await worker.stop()
        await db.close()
        return spent

    return await full_and_grown(run, "watch", sizes)


async def upload_path(work: Path, data: bytes, sizes: list[int]) -> dict:
    async def run(name: str, steps: list[int]) -> tuple[list[float], list[float]]:
        settings = load_settings(environ={}, db_path=str(work / f"{name}.db"), data_dir=str(work / f"{name}-data"),
                                 secret_key="bench", parse_workers=0, scan_interval=3600, max_upload_mb=200)
        client = TestClient(TestServer(create_app(settings)))
        await client.start_server()
        db = client.app[keys.DB]
        user = await users.add_user(db, "analyst@example.com", "Analyst", True)
        token, _ = await users.issue_token(db, user.id)
        client.app[keys.CLOCK].fixed = NOW
        receive, process = [], []
        for size in steps:
            form = aiohttp.FormData()
            form.add_field("file", io.BytesIO(data[:size]), filename="big.jsonl",
                           content_type="application/octet-stream")
            t = cpu()
            resp = await client.post("/api/upload/sessions", data=form, headers={"Authorization": f"Bearer {token}"})
            assert resp.status == 200, await resp.text()
            t1 = cpu()
            await client.app[keys.WORKER].drain()
            process.append(cpu() - t1)
            receive.append(t1 - t)
        await client.close()
        return receive, process

    fulls = [await run(f"upload-full-{i}", [sizes[-1]]) for i in range(FULL_RUNS)]
    receive, process = await run("upload-grown", sizes)
    out = report(median([p[0] for _, p in fulls]), process)
    out["receive_full_s"] = round(median([r[0] for r, _ in fulls]), 4)
    out["receive_per_pass_s"] = round(sum(receive[1:]) / len(receive[1:]), 4)
    return out


async def full_and_grown(run, name: str, sizes: list[int]) -> dict:
    """One full pass over the final file (median of FULL_RUNS, each on a fresh database) against the
    passes that grow it."""
    full = median([(await run(f"{name}-full-{i}", [sizes[-1]]))[0] for i in range(FULL_RUNS)])
    return report(full, await run(f"{name}-grown", sizes))


def report(full: float, grown: list[float]) -> dict:
    passes = grown[1:]
    return {
        "full_pass_final_file_s": round(full, 4),
        "first_pass_s": round(grown[0], 4),
        "passes": len(passes),
        "passes_total_s": round(sum(passes), 4),
        "passes_total_vs_full": round(sum(passes) / full, 3),
        "pass_median_s": round(median(passes), 4),
        "pass_max_s": round(max(passes), 4),
        "pass_max_vs_full": round(max(passes) / full, 4),
        "pass_median_vs_full": round(median(passes) / full, 4),
    }


async def main_async(args: argparse.Namespace) -> dict:
    work = Path(args.work)
    data, sizes = transcript(work, args.mb, args.step_mb, args.passes)
    results = {"file_mb": round(sizes[0] / 1e6, 2), "final_mb": round(sizes[-1] / 1e6, 2),
               "step_mb": args.step_mb, "load_avg_at_start": os.getloadavg()}
    for name, path in (("processor", processor_path), ("watch", watch_path), ("upload", upload_path)):
        if name not in args.paths:
            continue
        run_dir = work / "runs"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()
        results[name] = await path(run_dir, data, sizes)
        print(name, json.dumps(results[name]), flush=True)
    results["load_avg_at_end"] = os.getloadavg()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/agnes-incremental-bench")
    ap.add_argument("--mb", type=float, default=50)
    ap.add_argument("--step-mb", type=float, default=0.5)
    ap.add_argument("--passes", type=int, default=30)
    ap.add_argument("--paths", default="processor,watch,upload")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    common.compile_service()
    results = asyncio.run(main_async(args))
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
