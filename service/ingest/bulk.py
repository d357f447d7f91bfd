"""Bulk ingest of files and directories (``agnes-home ingest``), with bounded concurrency."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

from ..db import Database
from ..store import ingest as store
from .processor import Outcome, Processor
from .scanner import SUFFIXES


@dataclass
class Report:
    files: int = 0
    processed: int = 0
    unchanged: int = 0
    failed: int = 0
    lines: int = 0
    skipped_lines: int = 0
    bytes: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0

    def add(self, outcome: Outcome) -> None:
        self.lines += outcome.lines
        self.skipped_lines += outcome.skipped
        self.bytes += outcome.bytes
        if outcome.status == "processed":
            self.processed += 1
        elif outcome.status == "unchanged":
            self.unchanged += 1
        else:
            self.failed += 1
            self.errors.append(f"file {outcome.file_id}: {outcome.error}")


def expand(paths: Iterable[str]) -> list[str]:
    """Files as given, and every transcript under the directories given, as absolute paths."""
    found: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for dirpath, _dirs, names in os.walk(path):
                found.extend(os.path.abspath(os.path.join(dirpath, n)) for n in sorted(names) if n.endswith(SUFFIXES))
        elif path.is_file():
            found.append(str(path.resolve()))
        else:
            raise FileNotFoundError(raw)
    return sorted(set(found))


async def ingest_paths(db: Database, user_id: int, paths: list[str], *, workers: int,
                       clock: Callable[[], datetime], max_failures: int = 5, force: bool = False,
                       progress: Callable[[Outcome], None] | None = None) -> Report:
    """Register and process every file; parsing runs in ``workers`` processes, writes are serialised."""
    report = Report(files=len(paths))
    started = time.perf_counter()
    processor = Processor(db, workers=workers, clock=clock, max_failures=max_failures)
    ids = await store.register_files(db, user_id, paths, "cli", clock())
    queue: asyncio.Queue[int] = asyncio.Queue()
    for file_id in ids:
        queue.put_nowait(file_id)

    async def run() -> None:
        while not queue.empty():
            outcome = await processor.process(queue.get_nowait(), force=force)
            report.add(outcome)
            if progress is not None:
                progress(outcome)

    try:
        # One more task than processes keeps every process busy while a write is committing.
        await asyncio.gather(*(run() for _ in range(max(1, workers) + 1)))
    finally:
        processor.close()
    report.seconds = time.perf_counter() - started
    return report
