"""Faults an operator meets: a full disk and a database locked by another process."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from service import keys
from service.app import create_app
from service.config import load_settings
from tests.conftest import NOW, SAMPLES, make_caller

SAMPLE = SAMPLES / "alice" / "c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl"


def form(name: str, data: bytes) -> aiohttp.FormData:
    fd = aiohttp.FormData()
    fd.add_field("file", io.BytesIO(data), filename=name, content_type="application/octet-stream")
    return fd


@pytest.fixture
def full_disk(tmp_path):
    """A real, tiny file system (tmpfs of 256 KB) as the data directory: writes past it get ENOSPC."""
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (a real full disk)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path) -> Path:
    """Fill the file system to the last byte; returns the filler file."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for block in (65536, 4096, 1):
            try:
                while os.write(fd, b"x" * block):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


@pytest.fixture
async def full_client(aiohttp_client, tmp_path, full_disk):
    settings = load_settings(environ={}, db_path=str(tmp_path / "agnes.db"), data_dir=str(full_disk),
                             secret_key="s", parse_workers=0)
    client = await aiohttp_client(create_app(settings))
    client.app[keys.CLOCK].fixed = NOW
    return client


async def test_an_upload_that_fills_the_disk_leaves_no_temporary_file(full_client, full_disk):
    client = full_client
    ana = await make_caller(client.app[keys.DB], "ana@example.com")
    folder = full_disk / "sessions" / str(ana.user.id)
    for size in (1024 * 1024, 3000):  # one failing mid-stream, one when its buffered tail is flushed
        filler = fill(full_disk) if size < 8192 else None
        resp = await client.post("/api/upload/sessions", data=form("big.jsonl", os.urandom(size)),
                                 headers=ana.headers)
        assert resp.status >= 500
        assert sorted(p.name for p in folder.iterdir()) == []  # no .upload-*.tmp stranded
        if filler is not None:
            filler.unlink()
    # The space is free again: a transcript that fits is stored.
    resp = await client.post("/api/upload/sessions", data=form("s.jsonl", SAMPLE.read_bytes()), headers=ana.headers)
    assert resp.status == 200
    assert (folder / "s.jsonl").read_bytes() == SAMPLE.read_bytes()


async def test_a_full_disk_is_a_503_storage_full_with_retry_after(full_client, full_disk, caplog):
    client = full_client
    ana = await make_caller(client.app[keys.DB], "ana@example.com")
    filler = fill(full_disk)
    resp = await client.post("/api/upload/sessions", data=form("s.jsonl", SAMPLE.read_bytes()), headers=ana.headers)
    assert resp.status == 503
    assert await resp.json() == {"detail": resp_detail(await resp.json()), "code": "storage_full"}
    assert int(resp.headers["Retry-After"]) > 0
    lines = [r for r in caplog.records if "no space" in r.getMessage().lower()]
    assert len(lines) == 1 and lines[0].exc_info is None  # one clear line, no traceback
    filler.unlink()
    resp = await client.post("/api/upload/sessions", data=form("s.jsonl", SAMPLE.read_bytes()), headers=ana.headers)
    assert resp.status == 200


def resp_detail(body: dict) -> str:
    assert isinstance(body["detail"], str) and "space" in body["detail"]
    return body["detail"]


_LOCKER = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("CREATE TABLE IF NOT EXISTS held_by_another_process (x)")
print("locked", flush=True)
sys.stdin.read()  # hold the write lock until the test closes our stdin
conn.rollback()
"""


class Locker:
    """Another process holding the database's write lock."""

    def __init__(self, path: str) -> None:
        import sys

        self.proc = subprocess.Popen([sys.executable, "-c", _LOCKER, path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        assert self.proc.stdout.readline() == b"locked\n"

    def release(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=10) == 0
        self.proc.stdout.close()


@pytest.mark.sqlite_only  # SQLite's file lock
async def test_a_database_locked_by_another_process_is_a_quick_503_database_busy(client, settings, alice, caplog):
    import asyncio

    locker = await asyncio.to_thread(Locker, settings.db_path)  # the loop finishes its own writes meanwhile
    try:
        posts = [client.post("/api/me/onboarded", json={"source": "self_unmark", "onboarded": False},
                             headers=alice.headers) for _ in range(5)]
        # Five writes queued behind the lock share one bounded wait (before: 5 s each, in turn).
        answers = await asyncio.wait_for(asyncio.gather(*posts), timeout=4)
        for resp in answers:
            assert resp.status == 503
            body = await resp.json()
            assert body["code"] == "database_busy" and "busy" in body["detail"]
            assert int(resp.headers["Retry-After"]) > 0
        assert all(r.exc_info is None for r in caplog.records if r.levelname == "ERROR")
        assert any("database_busy" in r.getMessage() or "locked" in r.getMessage() for r in caplog.records)
    finally:
        locker.release()
    resp = await client.post("/api/me/onboarded", json={"source": "self_unmark", "onboarded": False},
                             headers=alice.headers)
    assert resp.status == 200 and (await resp.json())["onboarded"] is False


async def test_the_workers_own_transactions_never_turn_a_request_into_a_503(client, db, alice):
    import asyncio

    async def long_ingest_transaction():
        async with db.transaction() as conn:
            await conn.execute("UPDATE users SET name = name")
            await asyncio.sleep(1.5)  # longer than a request's bound on waiting for another process

    held = asyncio.create_task(long_ingest_transaction())
    await asyncio.sleep(0)
    resp = await client.post("/api/me/onboarded", json={"source": "self_unmark", "onboarded": False},
                             headers=alice.headers)
    assert resp.status == 200
    await held


@pytest.mark.sqlite_only  # SQLite's file lock
async def test_an_upload_stored_while_the_database_was_locked_is_registered_on_the_next_tick(client, settings, alice):
    import asyncio

    client.app[keys.CLOCK].fixed = NOW
    locker = await asyncio.to_thread(Locker, settings.db_path)  # the loop finishes its own writes meanwhile
    try:
        resp = await client.post("/api/upload/sessions", data=form("s.jsonl", SAMPLE.read_bytes()),
                                 headers=alice.headers)
        assert resp.status == 503 and (await resp.json())["code"] == "database_busy"
    finally:
        locker.release()
    stored = Path(settings.data_dir) / "sessions" / str(alice.user.id) / "s.jsonl"
    assert stored.read_bytes() == SAMPLE.read_bytes()
    worker = client.app[keys.WORKER]
    await worker.tick()
    await worker.drain()
    resp = await client.get("/api/me/home-stats?window=7d", headers=alice.headers)
    assert (await resp.json())["prompts"] == 5
