"""The agnes-home command line, run as a real process against a real database."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGNES_")}
    # Temporary files of the process (multiprocessing's pymp-* directories, which a SIGKILLed
    # server cannot remove) stay inside the test's own directory.
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    env.update({"AGNES_DB_PATH": str(tmp_path / "cli.db"), "AGNES_DATA_DIR": str(tmp_path / "data"),
                "TMPDIR": str(scratch), **extra})
    return env


def run(tmp_path: Path, *args: str, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
    if ("AGNES_DB_PATH" not in extra and not (tmp_path / "cli.db").exists()
            and args[:1] not in (("migrate",), ("demo",), ("serve",), ("config",), ("backup",))):
        # Only migrate, serve and demo create a database (others refuse a missing one): set the
        # tests' database up as an operator would.
        run(tmp_path, "migrate")
    proc = subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=cli_env(tmp_path, **extra),
                          capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_users_and_tokens_round_trip(tmp_path):
    run(tmp_path, "users", "add", "Ana@Example.com", "--name", "Ana", "--onboarded")
    run(tmp_path, "users", "add", "ben@example.com")
    dup = run(tmp_path, "users", "add", "ana@example.com", check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    for odd in ("", "   ", "no-at-sign", "x@y@z", "@example.com", "ana@", "new\nline@ex.com", "sp ace@ex.com"):
        bad = run(tmp_path, "users", "add", odd, check=False)
        assert bad.returncode == 1 and "is not an email address" in bad.stderr, odd
    listed = json.loads(run(tmp_path, "users", "list", "--json").stdout)
    assert [(u["email"], u["name"], u["onboarded"]) for u in listed] == [
        ("ana@example.com", "Ana", True), ("ben@example.com", "", False)]

    issued = run(tmp_path, "tokens", "issue", "ana@example.com")
    token = issued.stdout.strip().splitlines()[-1]
    assert token.startswith("agnes_pat_") and len(token) > 40
    tokens = json.loads(run(tmp_path, "tokens", "list", "--json").stdout)
    assert len(tokens) == 1 and token.startswith(tokens[0]["prefix"]) and tokens[0]["revoked_at"] is None
    assert token not in run(tmp_path, "tokens", "list").stdout

    revoked = run(tmp_path, "tokens", "revoke", "--id", str(tokens[0]["id"]))
    assert "revoked 1 token(s)" in revoked.stdout
    assert json.loads(run(tmp_path, "tokens", "list", "--json").stdout)[0]["revoked_at"] is not None
    again = run(tmp_path, "tokens", "revoke", "--id", str(tokens[0]["id"]), check=False)
    assert again.returncode == 1 and "no active token matched" in again.stderr and not again.stdout
    # The whole token, pasted as the prefix (what a person holding a leaked token has), revokes it.
    second = run(tmp_path, "tokens", "issue", "ana@example.com").stdout.strip().splitlines()[-1]
    assert "revoked 1 token(s)" in run(tmp_path, "tokens", "revoke", "--prefix", second).stdout
    # And the prefix exactly as `tokens list` shows it, ellipsis included.
    third = run(tmp_path, "tokens", "issue", "ana@example.com").stdout.strip().splitlines()[-1]
    shown = next(line.split("\t")[1] for line in run(tmp_path, "tokens", "list").stdout.splitlines()
                 if "active" in line)
    assert shown.endswith("…") and third.startswith(shown[:-1])
    assert "revoked 1 token(s)" in run(tmp_path, "tokens", "revoke", "--prefix", shown).stdout
    assert all(t["revoked_at"] for t in json.loads(run(tmp_path, "tokens", "list", "--json").stdout))


def test_token_for_unknown_user_fails_clearly(tmp_path):
    proc = run(tmp_path, "tokens", "issue", "ghost@example.com", check=False)
    assert proc.returncode == 1 and "no user with email 'ghost@example.com'" in proc.stderr


def test_invalid_configuration_stops_with_the_key(tmp_path):
    proc = run(tmp_path, "users", "list", check=False, AGNES_HOME_SHOW_AUTOMODE="1", AGNES_PORT="abc")
    assert proc.returncode == 2 and "AGNES_PORT" in proc.stderr


@pytest.mark.parametrize("command", [[], ["users"], ["users", "add"], ["tokens", "issue"], ["tokens", "revoke"],
                                     ["serve"], ["migrate"], ["demo"], ["config"]])
def test_every_command_has_help(tmp_path, command):
    proc = run(tmp_path, *command, "--help")
    assert proc.stdout.startswith("usage: agnes-home")


def test_serve_answers_and_stops_cleanly_on_sigterm(tmp_path):
    run(tmp_path, "users", "add", "ana@example.com", "--onboarded")
    token = run(tmp_path, "tokens", "issue", "ana@example.com").stdout.strip().splitlines()[-1]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], cwd=ROOT,
                            env=cli_env(tmp_path, AGNES_PORT=str(port), AGNES_CLIENT_TIMEOUT="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1) as resp:
                    assert resp.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        req = urllib.request.Request(f"{base}/api/me", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.load(resp)["email"] == "ana@example.com"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{base}/api/me", timeout=5)
        assert info.value.code == 401 and json.load(info.value)["code"] == "unauthorized"
        # A client that trickles its headers (slowloris) is cut off AGNES_CLIENT_TIMEOUT after
        # connecting, however steadily it sends.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            slow.setblocking(False)
            started, closed = time.monotonic(), False
            while not closed and time.monotonic() - started < 4:
                time.sleep(0.2)
                try:
                    slow.sendall(b"X-Drip: 1\r\n")
                    closed = slow.recv(1, socket.MSG_PEEK) == b""
                except BlockingIOError:  # still open, nothing to read
                    pass
                except ConnectionError:
                    closed = True
            assert closed and 0.8 < time.monotonic() - started < 2.5
        # What this process created is its own: the database is not readable by other accounts.
        assert (tmp_path / "cli.db").stat().st_mode & 0o077 == 0
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr and "stopped" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


SAMPLES = ROOT.parent / "shared" / "samples"


def test_ingest_reports_and_stores_real_numbers(tmp_path):
    run(tmp_path, "users", "add", "alice@example.com")
    proc = run(tmp_path, "ingest", str(SAMPLES / "alice"), str(SAMPLES / "bob" / "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d.jsonl"),
               "--user", "alice@example.com", "--json", "--workers", "1")
    report = json.loads(proc.stdout)
    # The parse process re-runs the main module (here service.cli, by name): no import warning.
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert (report["files"], report["processed"], report["failed"]) == (7, 7, 0)
    assert report["skipped_lines"] == 6
    sample_lines = sum(1 for p in SAMPLES.glob("alice/*.jsonl") for line in p.read_bytes().splitlines() if line.strip())
    assert report["lines"] == sample_lines + 10  # 9a8b: 10 non-blank lines, 6 of them skipped
    again = json.loads(run(tmp_path, "ingest", str(SAMPLES / "alice"), "--user", "alice@example.com", "--json").stdout)
    assert (again["processed"], again["unchanged"]) == (0, 6)  # same size and mtime: not even read
    forced = run(tmp_path, "ingest", str(SAMPLES / "alice"), "--user", "alice@example.com", "--force").stdout
    assert forced.startswith("files 6 (processed 6, unchanged 0, failed 0); lines ") and "MB/s" in forced


def test_the_ingest_path_does_not_load_the_web_stack():
    """`agnes-home ingest` (and each parse process, which re-runs the command's module) needs no
    web server: importing aiohttp cost each process 0.1-0.4 s of CPU (its connector reads the
    system's CA certificates at import)."""
    code = ("import sys, service.cli, service.ingest.bulk, service.ingest.jobs; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'aiohttp_jinja2', 'jinja2', 'tqdm')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_ingest_unknown_user_or_path_fails_clearly(tmp_path):
    run(tmp_path, "users", "add", "alice@example.com")
    proc = run(tmp_path, "ingest", str(SAMPLES / "alice"), "--user", "nobody@example.com", check=False)
    assert proc.returncode == 1 and "no user with email" in proc.stderr
    proc = run(tmp_path, "ingest", str(tmp_path / "missing"), "--user", "alice@example.com", check=False)
    assert proc.returncode == 1 and "no such file or directory" in proc.stderr


def test_reprocess_and_quarantine_commands(tmp_path):
    import sqlite3

    run(tmp_path, "users", "add", "alice@example.com")
    run(tmp_path, "ingest", str(SAMPLES / "alice"), "--user", "alice@example.com")
    assert "6 file(s) marked for reprocessing" in run(tmp_path, "reprocess").stdout
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        assert conn.execute("SELECT DISTINCT processor_version FROM session_files").fetchall() == [(0,)]
        conn.execute("UPDATE session_files SET quarantined_at = '2026-01-01T00:00:00.000000Z', failure_count = 5, "
                     "last_error = 'boom' WHERE path LIKE '%agent-a1b2c3%'")
    listed = json.loads(run(tmp_path, "quarantine", "list", "--json").stdout)
    assert [(q["failure_count"], q["last_error"], q["email"]) for q in listed] == [(5, "boom", "alice@example.com")]
    file_id = listed[0]["id"]
    assert json.loads(run(tmp_path, "quarantine", "retry", "--json").stdout) == {"released": [file_id]}
    assert run(tmp_path, "quarantine", "list").stdout.strip() == "no quarantined files"
    assert run(tmp_path, "quarantine", "retry").stdout.strip() == "no quarantined files"  # nothing to do: fine
    gone = run(tmp_path, "quarantine", "retry", "--id", str(file_id), check=False)
    assert gone.returncode == 1 and f"file {file_id} is not quarantined" in gone.stderr


def test_prune_and_backup(tmp_path):
    import sqlite3

    run(tmp_path, "users", "add", "bob@example.com")
    run(tmp_path, "ingest", str(SAMPLES / "bob"), "--user", "bob@example.com")
    for bad in ("0", "-30", "36501", "x"):  # a typo must not wipe everyone's activity
        refused = run(tmp_path, "prune", "--days", bad, check=False)
        assert refused.returncode == 2 and "--days" in refused.stderr, bad
    counts = json.loads(run(tmp_path, "prune", "--days", "1", "--json").stdout)
    # Every sample activity row is days older than "now" (the real clock): --days 1 removes them all.
    assert counts == {"usage_events": 1, "activity_messages": 6, "activity_prompts": 4}
    backup = tmp_path / "backups" / "copy.db"
    out = run(tmp_path, "backup", str(backup)).stdout
    assert "backed up" in out
    with sqlite3.connect(backup) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT COUNT(*) FROM session_summaries").fetchone() == (5,)
        assert conn.execute("SELECT email FROM users").fetchall() == [("bob@example.com",)]
    again = run(tmp_path, "backup", str(backup), check=False)
    assert again.returncode == 1 and "exists" in again.stderr
    nowhere = run(tmp_path, "backup", "/proc/nope/x.db", check=False)
    assert nowhere.returncode == 1 and "cannot write the backup" in nowhere.stderr
    assert "Traceback" not in nowhere.stderr
    # A mistyped (or, from cron, relative) database path is refused, not created and backed up empty.
    typo = tmp_path / "typo" / "agnes.dbx"
    missing = run(tmp_path, "backup", str(tmp_path / "other.db"), check=False, AGNES_DB_PATH=str(typo))
    assert missing.returncode == 1 and f"no database at {typo}" in missing.stderr
    assert not typo.parent.exists() and not (tmp_path / "other.db").exists()
    as_json = json.loads(run(tmp_path, "backup", str(tmp_path / "b2.db"), "--json").stdout)
    assert as_json == {"database": str(tmp_path / "cli.db"), "backup": str(tmp_path / "b2.db"),
                       "bytes": (tmp_path / "b2.db").stat().st_size}
    # Copied as it is, never migrated first (here a schema this build does not know).
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        conn.execute("PRAGMA user_version = 99")
    run(tmp_path, "backup", str(tmp_path / "b3.db"))
    with sqlite3.connect(tmp_path / "b3.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (99,)


def test_a_backup_that_fails_halfway_leaves_nothing_at_its_name(tmp_path):
    """A file at the backup's name is a whole backup: one cut short by a full disk (here a file size
    limit, which kills the process the way SIGKILL would) is not left there to be mistaken for one."""
    import resource

    run(tmp_path, "users", "add", "bob@example.com")
    run(tmp_path, "ingest", str(SAMPLES / "bob"), "--user", "bob@example.com")
    size = (tmp_path / "cli.db").stat().st_size
    assert size > 40_000
    target = tmp_path / "backups" / "nightly.db"

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    cut = subprocess.run([sys.executable, "-m", "service.cli", "backup", str(target)], cwd=ROOT,
                         env=cli_env(tmp_path), capture_output=True, text=True, timeout=60,
                         preexec_fn=limit_file_size)
    assert cut.returncode != 0 and not target.exists()
    run(tmp_path, "backup", str(target))  # the name is free for the next try
    with sqlite3.connect(target) as conn:
        assert conn.execute("SELECT COUNT(*) FROM session_summaries").fetchone() == (5,)


def test_database_failures_end_with_one_line_not_a_hang(tmp_path):
    """The connection's threads used to keep the process alive after the traceback, forever."""
    import sqlite3

    half = tmp_path / "half.db"  # says schema 1, has no tables: the next script fails
    with sqlite3.connect(half) as conn:
        conn.execute("PRAGMA user_version = 1")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all, but long enough to have a header" * 10)
    newer = tmp_path / "newer.db"
    run(tmp_path, "migrate", AGNES_DB_PATH=str(newer))
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    for path, why in ((half, "0002_status_frame.sql failed"), (garbage, "file is not a database"),
                      (newer, "newer than this agnes-home knows")):
        for command in (["users", "list"], ["serve"]):
            proc = run(tmp_path, *command, check=False, AGNES_DB_PATH=str(path), AGNES_PORT=str(free_port()))
            assert proc.returncode == 1, (path, command, proc.stderr)
            assert f"agnes-home: database {path}: " in proc.stderr and why in proc.stderr, proc.stderr
            assert "Traceback" not in proc.stderr


def test_serve_on_a_port_in_use_says_so(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run(tmp_path, "serve", check=False, AGNES_PORT=str(port))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"agnes-home: cannot listen on 127.0.0.1:{port}: " in proc.stderr and "AGNES_PORT" in proc.stderr


def test_tables_register_grant_list(tmp_path):
    data = tmp_path / "data" / "tables"
    data.mkdir(parents=True)
    (data / "orders.csv").write_text("id,total\n1,10\n2,20\n")
    outside = tmp_path / "outside.csv"
    outside.write_text("x\n")
    run(tmp_path, "users", "add", "ana@example.com")
    out = run(tmp_path, "tables", "register", "orders", str(data / "orders.csv")).stdout
    assert "registered table orders -> tables/orders.csv (2 rows, granted users only)" in out
    run(tmp_path, "tables", "register", "events.v2", str(data / "orders.csv"), "--rows", "7", "--public",
        "--query-mode", "remote")
    for bad_id in (".hidden", "a/b", "x" * 129, "semi;colon", ""):
        proc = run(tmp_path, "tables", "register", bad_id, str(data / "orders.csv"), check=False)
        assert proc.returncode == 1 and "invalid table id" in proc.stderr, bad_id
    proc = run(tmp_path, "tables", "register", "escape", str(outside), check=False)
    assert proc.returncode == 1 and "not under the data directory" in proc.stderr
    proc = run(tmp_path, "tables", "register", "dots", str(data / ".." / ".." / "outside.csv"), check=False)
    assert proc.returncode == 1 and "not under the data directory" in proc.stderr
    # Under the data directory but never publishable: transcripts, the cookie key, temporary files.
    private = {"sessions/1/s.jsonl": "transcripts", "secret_key": "signs sign-in cookies",
               "tables/.upload-x.tmp": "hidden or temporary"}
    for relative, why in private.items():
        target = tmp_path / "data" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("secret\n")
        proc = run(tmp_path, "tables", "register", "leak", str(target), "--public", check=False)
        assert proc.returncode == 1 and "cannot be published" in proc.stderr and why in proc.stderr, relative
    proc = run(tmp_path, "tables", "register", "neg", str(data / "orders.csv"), "--rows", "-5", check=False)
    assert proc.returncode == 1 and "must not be negative" in proc.stderr
    assert run(tmp_path, "tables", "grant", "orders", "ana@example.com").stdout.strip() == \
        "granted orders to ana@example.com"
    assert run(tmp_path, "tables", "grant", "nope", "ana@example.com", check=False).returncode == 1
    listed = json.loads(run(tmp_path, "tables", "list", "--json").stdout)
    assert listed == [
        {"id": "events.v2", "path": "tables/orders.csv", "rows": 7, "query_mode": "remote", "source_type": "",
         "public": True, "granted": []},
        {"id": "orders", "path": "tables/orders.csv", "rows": 2, "query_mode": "local", "source_type": "",
         "public": False, "granted": ["ana@example.com"]},
    ]
    (data / "no-newline.csv").write_text("id,name\n1,x\n2,y")  # the last row has no newline
    out = run(tmp_path, "tables", "register", "nonl", str(data / "no-newline.csv")).stdout
    assert "(2 rows," in out


def test_attribution_set_list_remove_and_reprocess(tmp_path):
    import sqlite3

    run(tmp_path, "users", "add", "alice@example.com")
    run(tmp_path, "ingest", str(SAMPLES / "alice"), "--user", "alice@example.com")
    out = run(tmp_path, "attribution", "set", "skill", "data-quality-check", "flea", "flea-dq").stdout
    assert "skill 'data-quality-check' -> flea flea-dq" in out
    run(tmp_path, "attribution", "set", "skill", "data-quality-check", "curated", "cur-dq")
    run(tmp_path, "attribution", "set", "command", "agnes:explore", "curated", "cur-explore")
    assert json.loads(run(tmp_path, "attribution", "list", "--json").stdout) == [
        {"kind": "command", "name": "agnes:explore", "source": "curated", "ref_id": "cur-explore"},
        {"kind": "skill", "name": "data-quality-check", "source": "curated", "ref_id": "cur-dq"},
        {"kind": "skill", "name": "data-quality-check", "source": "flea", "ref_id": "flea-dq"}]
    bad = run(tmp_path, "attribution", "set", "skill", "x", "official", "y", check=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    # Stored events keep their attribution until their files are reprocessed.
    run(tmp_path, "ingest", str(SAMPLES / "alice"), "--user", "alice@example.com", "--force")
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        rows = conn.execute("SELECT source, ref_id FROM usage_events WHERE ref_id IS NOT NULL ORDER BY ref_id").fetchall()
    assert rows == [("curated", "cur-dq"), ("curated", "cur-explore")]
    assert "removed 1" in run(tmp_path, "attribution", "remove", "skill", "data-quality-check", "curated").stdout
    assert run(tmp_path, "attribution", "remove", "skill", "data-quality-check", "curated", check=False).returncode == 1


def test_demo_prints_an_address_a_browser_can_open(tmp_path):
    out = run(tmp_path, "demo", AGNES_HOST="0.0.0.0", AGNES_PORT="8123").stdout
    assert "open http://127.0.0.1:8123/login and paste the token below" in out
    assert out.strip().splitlines()[-1].startswith("agnes_pat_")
    # Run again (`make run` twice): a new token, printed, and the first one still works.
    again = run(tmp_path, "demo").stdout
    assert "tokens printed by earlier runs still work" in again
    first, second = out.strip().splitlines()[-1], again.strip().splitlines()[-1]
    assert first != second
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM api_tokens WHERE revoked_at IS NULL AND label = 'demo'"
                            ).fetchone() == (2,)


def test_commands_other_than_migrate_serve_and_demo_never_create_a_database(tmp_path):
    """A typo in AGNES_DB_PATH (or another directory) silently created an empty database and wrote to it."""
    missing = tmp_path / "typo" / "agnes.db"
    for args in (["users", "add", "ana@example.com"], ["users", "list"], ["tokens", "issue", "ana@example.com"],
                 ["tokens", "list"], ["tables", "list"], ["quarantine", "list"], ["reprocess"], ["prune"],
                 ["sessions", "list"], ["attribution", "list"], ["ingest", str(tmp_path), "--user", "a@b.c"]):
        proc = run(tmp_path, *args, check=False, AGNES_DB_PATH=str(missing))
        assert proc.returncode == 1, (args, proc.stderr)
        assert str(missing) in proc.stderr and "AGNES_DB_PATH" in proc.stderr and "migrate" in proc.stderr, proc.stderr
        assert not missing.exists() and not missing.parent.exists(), args
    run(tmp_path, "migrate", AGNES_DB_PATH=str(missing))
    assert missing.exists()
    run(tmp_path, "users", "add", "ana@example.com", AGNES_DB_PATH=str(missing))


def test_tokens_revoke_takes_any_unique_prefix_or_the_whole_token_and_refuses_an_ambiguous_one(tmp_path):
    run(tmp_path, "users", "add", "ana@example.com")
    run(tmp_path, "users", "add", "ben@example.com")
    issued = [run(tmp_path, "tokens", "issue", email).stdout.strip().splitlines()[-1]
              for email in ("ana@example.com", "ana@example.com", "ben@example.com")]

    def active() -> set[str]:
        return {t["prefix"] for t in json.loads(run(tmp_path, "tokens", "list", "--json").stdout) if not t["revoked_at"]}

    shown = [t[:16] for t in issued]  # what `tokens list` displays
    assert active() == set(shown)
    # Ambiguous: every token starts with "agnes_pat_"; refused, naming each match, nothing revoked.
    proc = run(tmp_path, "tokens", "revoke", "--prefix", "agnes_pat_", check=False)
    assert proc.returncode == 1 and "3 active tokens" in proc.stderr
    assert all(p in proc.stderr for p in shown) and "ana@example.com" in proc.stderr
    assert active() == set(shown)
    # The shortest prefix of the displayed one that names only the first token.
    unique = next(shown[0][:n] for n in range(11, 17) if sum(s.startswith(shown[0][:n]) for s in shown) == 1)
    assert "revoked 1 token(s)" in run(tmp_path, "tokens", "revoke", "--prefix", unique).stdout
    assert active() == set(shown[1:])
    # Without the "agnes_pat_" part, as someone copying from a listing might, and with the ellipsis.
    short = next(shown[1][10:n] for n in range(13, 17) if sum(s[10:].startswith(shown[1][10:n]) for s in shown) == 1)
    # `--prefix=`: a token's random part may start with "-", which argparse would take for an option.
    assert "revoked 1 token(s)" in run(tmp_path, "tokens", "revoke", f"--prefix={short}…").stdout
    # The whole token.
    assert "revoked 1 token(s)" in run(tmp_path, "tokens", "revoke", "--prefix", issued[2]).stdout
    assert active() == set()
    gone = run(tmp_path, "tokens", "revoke", "--prefix", shown[0], check=False)
    assert gone.returncode == 1 and "no active token" in gone.stderr


def test_every_option_of_every_command_has_help_text():
    import argparse

    from service.cli import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{path} {action.dest}")

    walk(build_parser(), "agnes-home")
    assert missing == []


def test_config_show_is_a_readable_table_saying_where_each_value_came_from(tmp_path):
    config = tmp_path / "instance.yaml"
    config.write_text("server:\n  port: 9001\nauth:\n  secret_key: from-yaml-secret\n")
    proc = run(tmp_path, "config", "show", AGNES_CONFIG=str(config), AGNES_SCAN_INTERVAL="7",
               AGNES_PROXY_HEADER="X-Email")
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["setting", "value", "source"]
    rows = {line.split()[0]: line for line in lines[2:] if line.strip()}
    assert rows["port"].split()[1:] == ["9001", "YAML", f"({config}:", "server.port)"]
    assert rows["scan_interval"].split()[1:] == ["7.0", "environment", "(AGNES_SCAN_INTERVAL)"]
    assert rows["max_failures"].split()[1:] == ["5", "default"]
    assert rows["secret_key"].split()[1] == "***" and "from-yaml-secret" not in proc.stdout  # masked
    assert "AGNES_DB_PATH" in rows["db_path"]  # the test's environment sets it
    # Scripts: --json, with the same sources; the secret masked there too.
    data = json.loads(run(tmp_path, "config", "show", "--json", AGNES_CONFIG=str(config)).stdout)
    assert data["port"] == {"value": 9001, "source": "yaml", "key": "server.port"}
    assert data["max_failures"] == {"value": 5, "source": "default", "key": None}
    assert data["db_path"]["source"] == "environment" and data["db_path"]["key"] == "AGNES_DB_PATH"
    assert data["secret_key"]["value"] == "***"


def test_unknown_agnes_environment_variables_are_warned_about_at_start(tmp_path):
    """A misspelt name (AGNES_SCAN_INTERVALL) was silently ignored, while unknown YAML keys are refused."""
    proc = run(tmp_path, "users", "list", AGNES_SCAN_INTERVALL="5", AGNES_HOME_SHOW_STATUSFRAME="0")
    assert proc.returncode == 0
    warned = [line for line in proc.stderr.splitlines() if "not a setting" in line]
    assert len(warned) == 2
    assert any("AGNES_SCAN_INTERVALL" in line and "AGNES_SCAN_INTERVAL?" in line for line in warned)
    assert any("AGNES_HOME_SHOW_STATUSFRAME" in line and "AGNES_HOME_SHOW_STATUS_FRAME?" in line for line in warned)
    quiet = run(tmp_path, "users", "list")
    assert "not a setting" not in quiet.stderr


def test_the_console_script_ends_with_main_s_status_and_every_line_written(tmp_path):
    """run() skips the interpreter's teardown: what main() printed and logged (more than a pipe
    holds) must be out first, and the status must be main()'s."""
    script = (
        "import logging, sys\n"
        "import service.cli as cli\n"
        "def main():\n"
        "    print('x' * 199_999)\n"
        "    logging.getLogger('service.cli').warning('last words')\n"
        "    return 3\n"
        "cli.main = main\n"
        "cli.logs.configure('text', 'INFO')\n"
        "cli.run()\n"
        "print('never')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=cli_env(tmp_path), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 3
    assert proc.stdout == "x" * 199_999 + "\n"
    assert "last words" in proc.stderr
