"""SIGTERM during a bulk ingest by the real server: it stops in time, and nothing is half-written."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import make_corpus
from tests.test_cli import ROOT, cli_env, free_port, run

COPIES = 120


def totals(db: Path) -> dict:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        summary = conn.execute(
            "SELECT COUNT(*), SUM(prompts), SUM(input_tokens), SUM(output_tokens), SUM(user_messages) "
            "FROM session_summaries").fetchone()
        return {
            "summaries": summary,
            "messages": conn.execute("SELECT COUNT(DISTINCT message_key), SUM(output_tokens) FROM activity_messages")
            .fetchone(),
            "prompts": conn.execute("SELECT COUNT(DISTINCT prompt_key) FROM activity_prompts").fetchone(),
            "events": conn.execute("SELECT COUNT(*) FROM usage_events").fetchone(),
        }


def half_written(db: Path) -> list:
    """Files whose state says processed but whose summary or activity is missing, or the reverse."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT f.id FROM session_files f LEFT JOIN session_summaries s ON s.file_id = f.id "
            "WHERE (f.processor_version > 0) != (s.file_id IS NOT NULL) "
            "OR (s.file_id IS NOT NULL AND s.processor_version != f.processor_version) "
            "OR (f.processor_version = 0 AND EXISTS (SELECT 1 FROM activity_messages a WHERE a.file_id = f.id))"
        ).fetchall()


def processed(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM session_files WHERE processor_version > 0").fetchone()[0]


def serve(tmp_path: Path, watched: Path, port: int) -> subprocess.Popen:
    env = cli_env(tmp_path, AGNES_SESSION_DIR=str(watched), AGNES_PORT=str(port), AGNES_SCAN_INTERVAL="0.5",
                  AGNES_PARSE_WORKERS="1", AGNES_SHUTDOWN_TIMEOUT="5")
    return subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_mid_ingest_then_restart_gives_the_clean_numbers(tmp_path):
    watched = tmp_path / "watched"
    files = make_corpus(watched / "alice", COPIES, 200_000)  # padding: slow enough to stop mid-ingest
    run(tmp_path, "users", "add", "alice@example.com")
    db = tmp_path / "cli.db"

    proc = serve(tmp_path, watched, free_port())
    try:
        deadline = time.monotonic() + 60
        while not (0 < processed(db) < files * 0.8):
            assert time.monotonic() < deadline, "ingest never got under way"
            assert proc.poll() is None
            time.sleep(0.05)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
        stopped_in = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr[-2000:]
    assert stopped_in < 5 + 2, f"shutdown took {stopped_in:.1f}s"
    done = processed(db)
    assert 0 < done < files, "the stop must land mid-ingest for this test to mean anything"
    assert half_written(db) == []

    port = free_port()
    proc = serve(tmp_path, watched, port)
    try:
        deadline = time.monotonic() + 120
        while processed(db) < files:
            assert time.monotonic() < deadline, f"restart processed only {processed(db)} of {files}"
            assert proc.poll() is None
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            assert json.load(resp)["status"] == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    after_restart = totals(db)

    clean = tmp_path / "clean"
    clean.mkdir()
    run(clean, "users", "add", "alice@example.com")
    report = json.loads(run(clean, "ingest", str(watched), "--user", "alice@example.com", "--json").stdout)
    assert report["processed"] == files
    assert after_restart == totals(clean / "cli.db")
    assert after_restart["summaries"][0] == files and after_restart["prompts"][0] == COPIES * 12


@contextmanager
def serving_alice(tmp_path: Path) -> Iterator[tuple[int, str, subprocess.Popen]]:
    """A real `serve` with alice and her token, ready on its port; killed if the test leaves it running."""
    port = free_port()
    run(tmp_path, "users", "add", "alice@example.com")
    token = run(tmp_path, "tokens", "issue", "alice@example.com").stdout.strip().splitlines()[-1]
    proc = serve(tmp_path, tmp_path / "watched", port)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        yield port, token, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_sigterm_lets_an_upload_whose_body_is_still_arriving_finish(tmp_path):
    raw = (ROOT.parent / "shared" / "samples" / "alice" / "c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl").read_bytes()
    body = (b'--B0undary\r\nContent-Disposition: form-data; name="file"; filename="late.jsonl"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + raw + b"\r\n--B0undary--\r\n")
    with serving_alice(tmp_path) as (port, token, proc):
        conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn.sendall((f"POST /api/upload/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                      "Content-Type: multipart/form-data; boundary=B0undary\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body[:500])
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        conn.sendall(body[500:])  # the rest arrives after SIGTERM
        response = b""
        while chunk := conn.recv(65536):
            response += chunk
        conn.close()
        assert response.startswith(b"HTTP/1.1 200"), response[:200]
        assert json.loads(response.split(b"\r\n\r\n", 1)[1]) == {"status": "ok", "filename": "late.jsonl",
                                                                 "size": len(raw)}
        _, stderr = proc.communicate(timeout=15)
        assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    stored = list((tmp_path / "data" / "sessions").rglob("late.jsonl"))
    assert len(stored) == 1 and stored[0].read_bytes() == raw


def test_sigterm_lets_a_table_download_in_progress_finish(tmp_path):
    table = tmp_path / "data" / "tables" / "big.csv"
    table.parent.mkdir(parents=True)
    table.write_bytes(b"id,x\n" + b"1,abcdefghij\n" * 1_500_000)  # ~20 MB
    with serving_alice(tmp_path) as (port, token, proc):
        run(tmp_path, "tables", "register", "big", str(table), "--public")
        conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        conn.sendall((f"GET /api/data/big/download HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                      "Connection: close\r\n\r\n").encode())
        received = conn.recv(65536)
        proc.send_signal(signal.SIGTERM)
        while chunk := conn.recv(65536):  # a slow reader: ~3 s for the whole file
            received += chunk
            time.sleep(0.01)
        conn.close()
        head, body = received.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200") and body == table.read_bytes()
        _, stderr = proc.communicate(timeout=15)
        assert proc.returncode == 0, stderr


def test_a_client_that_drops_an_upload_is_a_499_without_a_traceback(tmp_path):
    with serving_alice(tmp_path) as (port, token, proc):
        conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn.sendall((f"POST /api/upload/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                      "Content-Type: multipart/form-data; boundary=B0undary\r\nContent-Length: 100000\r\n\r\n"
                      '--B0undary\r\nContent-Disposition: form-data; name="file"; filename="gone.jsonl"\r\n\r\n'
                      ).encode() + b"x" * 5000)
        time.sleep(0.3)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        conn.close()
        metrics = ""
        for _ in range(50):
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            if 'route="/api/upload/sessions"' in metrics:
                break
            time.sleep(0.1)
        assert 'status="499"' in metrics and 'route="/api/upload/sessions",status="500"' not in metrics
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
        assert "Traceback" not in stderr and "unhandled error" not in stderr, stderr
    sessions = tmp_path / "data" / "sessions"
    assert not [p for p in sessions.rglob("*") if p.is_file()]
