"""Bulk ingest of files and directories (``agnes-home ingest``), with bounded concurrency."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from concurrent.futures import Executor
from typing import Callable, Iterable

from ..db import BaseDatabase
from ..store import ingest as store
from .processor import Outcome, Processor
from .scanner import SUFFIXES

# Files per write transaction in a bulk ingest: enough to share the commit's cost, small enough
# that progress is visible and a failed batch is cheap to redo file by file.
MAX_BATCH = 32


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
            found.extend(_walk(path))
        elif path.is_file():
            found.append(os.path.realpath(path))
        else:
            raise FileNotFoundError(raw)
    return sorted(set(found))


def _walk(root: Path) -> Iterable[str]:
    """Transcripts under root, following symbolic links (the operator's own paths), each once and
    under its real path, so a file reached two ways is one file; a link loop is walked once."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirs, names in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirs.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(dirpath, name)
            if name.endswith(SUFFIXES) and os.path.isfile(full):  # a dangling link is no transcript
                yield os.path.realpath(full)


async def ingest_paths(db: BaseDatabase, user_id: int, paths: list[str], *, workers: int,
                       clock: Callable[[], datetime], max_failures: int = 5, force: bool = False,
                       progress: Callable[[Outcome], None] | None = None,
                       retention: timedelta | None = None, executor: Executor | None = None) -> Report:
    """Register and process every file: parsing runs in ``workers`` processes (``executor``:
    ones started already) while one writer stores whatever has been parsed so far, many files
    to a transaction."""
    report = Report(files=len(paths))
    started = time.perf_counter()

    def done(outcome: Outcome) -> None:
        report.add(outcome)
        if progress is not None:
            progress(outcome)

    processor = Processor(db, workers=workers, clock=clock, max_failures=max_failures, on_outcome=done,
                          retention=retention, executor=executor)
    ids = await store.register_files(db, user_id, paths, "cli", clock())
    todo: asyncio.Queue[int] = asyncio.Queue()
    for file_id in ids:
        todo.put_nowait(file_id)
    parsed: asyncio.Queue[store.Parsed | None] = asyncio.Queue(maxsize=4 * MAX_BATCH)
    parsers = max(1, workers) + 1  # one more than processes keeps every process busy

    async def parse() -> None:
        while not todo.empty():
            item = await processor.prepare(todo.get_nowait(), force=force)
            if isinstance(item, store.Parsed):
                await parsed.put(item)
        await parsed.put(None)

    async def write() -> None:
        finished = 0
        while finished < parsers:
            batch: list[store.Parsed] = []
            item = await parsed.get()
            while True:
                if item is None:
                    finished += 1
                else:
                    batch.append(item)
                if parsed.empty() or len(batch) >= MAX_BATCH:
                    break
                item = parsed.get_nowait()
            if batch:
                await processor.commit(batch)

    try:
        await asyncio.gather(write(), *(parse() for _ in range(parsers)))
    finally:
        processor.close()
    report.seconds = time.perf_counter() - started
    return report
