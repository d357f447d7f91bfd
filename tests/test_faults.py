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
