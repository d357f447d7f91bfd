"""The ``agnes-home`` command line: serve, migrate, users, tokens, and operator tasks."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sqlite3
import sys
import threading
from typing import Any, Awaitable, Callable

import msgspec

from . import logs
from .config import MAX_RETENTION_DAYS, ConfigError, Settings, load_settings, unknown_environment
from .db import BaseDatabase, Database, open_database
from .migrations import MigrationError, migrate_database
from .store import sessions, users

logger = logging.getLogger(__name__)

Command = Callable[[argparse.Namespace, Settings], Awaitable[int]]
JSON_HELP = "print JSON (for scripts)"


class CliError(Exception):
    """A user-facing command failure: printed, exit status 1."""


def _bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high]."""
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {raw!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}-{high}, got {value}")
        return value
    return parse


def _print_json(data: Any) -> None:
    sys.stdout.write(msgspec.json.encode(data).decode() + "\n")


async def open_db(settings: Settings, *, create: bool = False) -> BaseDatabase:
    """Open the database and bring the schema up to date (every command needs both).

    Only the commands that set a database up (migrate, serve, demo) may create one: anywhere else a
    missing file is a wrong AGNES_DB_PATH or directory, and writing users into a new empty database
    there would hide the mistake.
    """
    if not create and not settings.database_url and settings.db_path != ":memory:" \
            and not os.path.exists(settings.db_path):
        raise CliError(f"no database at {os.path.abspath(settings.db_path)} (AGNES_DB_PATH, or database.path in "
                       "the AGNES_CONFIG file, relative to the current directory). Point AGNES_DB_PATH at the "
                       "existing database, or create one there with `agnes-home migrate`.")
    db = open_database(settings, readers=1)
    try:
        await db.open()
        await migrate_database(db)
    except BaseException:
        await db.close()  # its connection threads would keep the process alive
        raise
    return db


def with_db(fn: Callable[[argparse.Namespace, Settings, BaseDatabase], Awaitable[int]], *,
            create: bool = False) -> Command:
    async def run(args: argparse.Namespace, settings: Settings) -> int:
        db = await open_db(settings, create=create)
        try:
            return await fn(args, settings, db)
        finally:
            await db.close()
    return run


def creating_db(fn: Callable[[argparse.Namespace, Settings, BaseDatabase], Awaitable[int]]) -> Command:
    """with_db for the commands that may create the database (migrate, demo)."""
    return with_db(fn, create=True)


async def _user_or_fail(db: Database, email: str) -> users.User:
    user = await users.get_user_by_email(db, email)
    if user is None:
        raise CliError(f"no user with email {email!r}; add one with `agnes-home users add {email}`")
    return user


# -- serve / migrate ---------------------------------------------------------------

async def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from aiohttp import web  # noqa: PLC0415

    from .app import create_app  # noqa: PLC0415

    from . import keys  # noqa: PLC0415

    app = create_app(settings)
    # aiohttp's own shutdown stops reading from every connection at once, so a request whose body
    # is still arriving (an upload) could never finish: handlers get the shutdown time first, with
    # the listening socket closed; then aiohttp's shutdown gives what is still being sent (a table
    # download, whose handler has returned) the same time before it cancels.
    # keepalive_timeout also bounds a fresh connection that never completes its headers
    # (aiohttp arms it on connect): without it, idle or trickling sockets stay open for an hour.
    runner = web.AppRunner(app, shutdown_timeout=settings.shutdown_timeout, access_log=None,
                           keepalive_timeout=settings.client_timeout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()  # the database and migrations: a failure still closes what opened
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:
            raise CliError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc} "
                           "(set AGNES_HOST / AGNES_PORT)") from None
        logger.info("serving on http://%s:%s", settings.host, settings.port)
        await stop.wait()
        logger.info("stopping: finishing in-flight work (at most %ss)", settings.shutdown_timeout)
        await site.stop()  # no new connections
        if not await app[keys.IN_FLIGHT].wait_idle(settings.shutdown_timeout):
            logger.warning("%d request(s) still running at the shutdown timeout: cancelled",
                           app[keys.IN_FLIGHT].count)
    finally:
        # Cancels what is still running, then runs cleanup_ctx in reverse: the ingest worker
        # (a file mid-write is rolled back), then the database.
        await runner.cleanup()
    logger.info("stopped")
    return 0


@creating_db
async def cmd_migrate(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    version = await db.schema_version()
    print(f"schema at version {version}")
    return 0


# -- users / tokens ------------------------------------------------------------------

@with_db
async def cmd_users_add(args, settings, db) -> int:
    try:
        user = await users.add_user(db, args.email, args.name or "", args.onboarded)
    except users.UserExists:
        raise CliError(f"a user with email {args.email!r} already exists") from None
    except users.InvalidEmail as exc:
        raise CliError(str(exc)) from None
    if args.json:
        _print_json(user)
    else:
        print(f"added user {user.id} {user.email}{' (onboarded)' if user.onboarded else ''}")
    return 0


@with_db
async def cmd_users_list(args, settings, db) -> int:
    found = await users.list_users(db)
    if args.json:
        _print_json(found)
        return 0
    for u in found:
        print(f"{u.id}\t{u.email}\t{u.name}\t{'onboarded' if u.onboarded else '-'}\t{u.last_pull_at or 'never'}")
    return 0


@with_db
async def cmd_tokens_issue(args, settings, db) -> int:
    user = await _user_or_fail(db, args.email)
    token, meta = await users.issue_token(db, user.id, args.label or "")
    print(f"Issued token {meta.prefix}… for {user.email}. It is shown once; store it now:", file=sys.stderr)
    print(token)
    return 0


@with_db
async def cmd_tokens_list(args, settings, db) -> int:
    user_id = (await _user_or_fail(db, args.email)).id if args.email else None
    found = await users.list_tokens(db, user_id)
    if args.json:
        _print_json(found)
        return 0
    for t in found:
        state = f"revoked {t.revoked_at}" if t.revoked_at else "active"
        print(f"{t.id}\t{t.prefix}…\t{t.email}\t{state}\tlast used {t.last_used_at or 'never'}")
    return 0


@with_db
async def cmd_tokens_revoke(args, settings, db) -> int:
    prefix = (args.prefix or "").strip().rstrip("…")  # as `tokens list` shows it, or the whole token
    if args.id is not None:
        count = await users.revoke_token(db, token_id=args.id)
    elif len(prefix) > users.DISPLAYED_PREFIX:
        count = await users.revoke_token(db, token=prefix)  # the whole token, pasted
    elif prefix:
        count = await users.revoke_token(db, token_id=await _one_token_by_prefix(db, prefix))
    elif args.email:
        count = await users.revoke_token(db, user_id=(await _user_or_fail(db, args.email)).id)
    else:
        raise CliError("say which token: --id, --prefix or --email (all of a user's tokens)")
    if not count:
        raise CliError("no active token matched (see `agnes-home tokens list`)")
    print(f"revoked {count} token(s)")
    return 0


async def _one_token_by_prefix(db: Database, prefix: str) -> int:
    """The id of the one active token whose displayed prefix starts with ``prefix`` (with or
    without the "agnes_pat_" part); an ambiguous prefix is refused with the matches listed."""
    if not prefix.startswith(users.TOKEN_PREFIX) and not users.TOKEN_PREFIX.startswith(prefix):
        prefix = users.TOKEN_PREFIX + prefix
    found = await users.active_tokens_by_prefix(db, prefix)
    if not found:
        raise CliError("no active token matched (see `agnes-home tokens list`)")
    if len(found) > 1:
        listed = "\n".join(f"  id {t.id}\t{t.prefix}…\t{t.email}" for t in found)
        raise CliError(f"{prefix!r} matches {len(found)} active tokens; give more of the prefix, or --id:\n{listed}")
    return found[0].id


def _parse_workers(args, settings) -> int:
    return settings.parse_workers if args.workers is None else args.workers


def _fork_parse_pool(args, settings):
    """Runs before the event loop: the parse processes start as forks of this process while it
    has no other thread (see processor.fork_parse_pool)."""
    from .ingest.processor import fork_parse_pool  # noqa: PLC0415

    return fork_parse_pool(_parse_workers(args, settings))


@with_db
async def cmd_ingest(args, settings, db) -> int:
    from datetime import timedelta  # noqa: PLC0415

    from .ingest.bulk import expand, ingest_paths  # noqa: PLC0415
    from .timeutil import utcnow  # noqa: PLC0415

    user = await _user_or_fail(db, args.user)
    try:
        paths = expand(args.paths)
    except FileNotFoundError as exc:
        raise CliError(f"no such file or directory: {exc}") from None
    total = sum(os.path.getsize(p) for p in paths)
    bar = None
    if not args.json and sys.stderr.isatty():  # tqdm costs 20 ms of imports: only for a terminal
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=total, unit="B", unit_scale=True, desc="ingest", file=sys.stderr)
    progress = (lambda outcome: bar.update(outcome.bytes)) if bar is not None else None

    workers = _parse_workers(args, settings)
    from .store.ingest import FileOwnedElsewhere  # noqa: PLC0415

    try:
        report = await ingest_paths(db, user.id, paths, workers=workers, clock=utcnow,
                                    max_failures=settings.max_failures, force=args.force, progress=progress,
                                    retention=timedelta(days=settings.retention_days),
                                    executor=getattr(args, "parse_pool", None))
    except FileOwnedElsewhere as exc:
        raise CliError(f"{exc} was already ingested for another user; a file has one owner "
                       "(copy it to ingest it for someone else)") from None
    if bar is not None:
        bar.close()
    from .store.ingest import rebuild_rollups  # noqa: PLC0415

    while await rebuild_rollups(db):
        pass
    if args.json:
        _print_json({"files": report.files, "processed": report.processed, "unchanged": report.unchanged,
                     "failed": report.failed, "lines": report.lines, "skipped_lines": report.skipped_lines,
                     "bytes": report.bytes, "seconds": round(report.seconds, 3),
                     "mb_per_s": round(report.mb_per_s, 2), "errors": report.errors})
    else:
        print(f"files {report.files} (processed {report.processed}, unchanged {report.unchanged}, "
              f"failed {report.failed}); lines {report.lines}, skipped {report.skipped_lines}; "
              f"{report.bytes / 1e6:.1f} MB in {report.seconds:.2f}s = {report.mb_per_s:.1f} MB/s")
        for error in report.errors:
            print(f"  failed: {error}", file=sys.stderr)
    return 1 if report.failed else 0


@with_db
async def cmd_reprocess(args, settings, db) -> int:
    from .store.ingest import reset_versions  # noqa: PLC0415

    user_id = (await _user_or_fail(db, args.user)).id if args.user else None
    count = await reset_versions(db, user_id)
    print(f"{count} file(s) marked for reprocessing; a running server's worker redoes them in the background "
          f"({settings.reprocess_batch} per tick, oldest first)")
    return 0


@with_db
async def cmd_quarantine(args, settings, db) -> int:
    from .store.ingest import quarantined, release_quarantine  # noqa: PLC0415

    if args.action == "list":
        rows = await quarantined(db)
        if args.json:
            _print_json(rows)
        elif not rows:
            print("no quarantined files")
        for r in rows if not args.json else ():
            print(f"{r['id']}\t{r['email']}\t{r['path']}\tfailures {r['failure_count']}\t{r['last_error']}")
        return 0
    released = await release_quarantine(db, args.id)
    if args.json:
        _print_json({"released": released})
    elif released:
        print(f"released {len(released)} file(s) for another try")
    elif args.id is not None:
        raise CliError(f"file {args.id} is not quarantined")
    else:
        print("no quarantined files")
    return 0 if released or args.id is None else 1


# -- maintenance ----------------------------------------------------------------------

@with_db
async def cmd_prune(args, settings, db) -> int:
    from datetime import timedelta  # noqa: PLC0415

    from .store.ingest import prune  # noqa: PLC0415
    from .timeutil import utcnow  # noqa: PLC0415

    days = args.days if args.days is not None else settings.retention_days
    counts = await prune(db, utcnow() - timedelta(days=days))
    if args.json:
        _print_json(counts)
    else:
        print(f"pruned activity older than {days} days: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


async def cmd_backup(args, settings) -> int:
    """Back up an existing database only: a mistyped or relative AGNES_DB_PATH (cron runs elsewhere)
    would otherwise create a fresh, empty one and "back it up" successfully every night."""
    if settings.database_url:
        raise CliError("backup copies the SQLite file; back PostgreSQL up with its own tools (pg_dump)")
    if not os.path.isfile(settings.db_path):
        raise CliError(f"no database at {os.path.abspath(settings.db_path)}; set AGNES_DB_PATH "
                       "(a relative path is taken from the current directory)")
    return await _backup(args, settings)


async def cmd_copy_database(args, settings) -> int:
    """Copy the SQLite database (AGNES_DB_PATH) into an empty PostgreSQL database, then compare row counts."""
    import asyncpg  # noqa: PLC0415 - only this command and the PostgreSQL backend need it

    from .store.copy import CopyError, copy_database  # noqa: PLC0415

    if not args.to.startswith(("postgresql://", "postgres://")):
        raise CliError(f"--to must be a postgresql:// URL, got {args.to!r}")
    if not os.path.isfile(settings.db_path):
        raise CliError(f"no database at {os.path.abspath(settings.db_path)}; set AGNES_DB_PATH to the SQLite "
                       "database to copy")
    source = Database(settings.db_path, readers=1)  # at the latest schema first: tables map one to one
    await source.open()
    try:
        await migrate_database(source)
    finally:
        await source.close()
    try:
        counts = await copy_database(settings.db_path, args.to)
    except CopyError as exc:
        raise CliError(str(exc)) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise CliError(f"PostgreSQL at --to: {exc}") from None
    if args.json:
        _print_json([{"table": c.table, "sqlite": c.source, "postgresql": c.target} for c in counts])
    else:
        for c in counts:
            print(f"{c.table}\t{c.target} rows")
        print(f"copied {len(counts)} tables, {sum(c.target for c in counts)} rows; every row count matches. "
              "Point AGNES_DATABASE_URL at the copy to serve from it.")
    return 0


async def _backup(args, settings) -> int:
    from pathlib import Path  # noqa: PLC0415

    target = Path(args.path)
    if target.exists():
        raise CliError(f"{target} exists; choose a new file name")
    # Copied as it is, not migrated first: a backup taken before an upgrade is of the old schema.
    db = Database(settings.db_path, readers=0)
    await db.open()
    # Written under a temporary name and linked into place when complete: a backup killed or
    # failing halfway (a full disk) must not leave a file at the name that looks like a backup.
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # VACUUM INTO writes a consistent, compacted copy while the service keeps running.
        await db.writer.execute("VACUUM INTO ?", (str(partial),))
        os.link(partial, target)  # never replaces a file that appeared meanwhile
    except (OSError, sqlite3.Error) as exc:
        raise CliError(f"cannot write the backup to {target}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
        await db.close()
    if args.json:
        _print_json({"database": os.path.abspath(settings.db_path), "backup": str(target.resolve()),
                     "bytes": target.stat().st_size})
    else:
        print(f"backed up {settings.db_path} to {target} ({target.stat().st_size} bytes)")
    return 0


@with_db
async def cmd_redact_stored(args, settings, db) -> int:
    from .redact import redact_stored, redact_text  # noqa: PLC0415
    from .store.tables import redact_local_md  # noqa: PLC0415

    report = await asyncio.to_thread(redact_stored, settings.data_dir)
    local_md = await redact_local_md(db, redact_text)
    if args.json:
        _print_json({"files": report.files, "changed": report.changed, "tokens": report.tokens,
                     "skipped": report.skipped, "local_md_tokens": local_md})
    else:
        print(f"checked {report.files} stored uploads: replaced {report.tokens} token(s) in "
              f"{len(report.changed)} file(s)" + (f"; {len(report.skipped)} replaced by an upload meanwhile "
                                                  "(already redacted)" if report.skipped else "")
              + f"; {local_md} token(s) in local CLAUDE.md files")
    return 0


# -- attribution ----------------------------------------------------------------------

@with_db
async def cmd_attribution(args, settings, db) -> int:
    from .store import ingest as ingest_store  # noqa: PLC0415

    if args.action == "list":
        rows = await ingest_store.list_attribution(db)
        if args.json:
            _print_json(rows)
        for r in rows if not args.json else ():
            print(f"{r['kind']}\t{r['name']}\t{r['source']}\t{r['ref_id']}")
        return 0
    if not (args.kind and args.name and args.source):
        raise CliError(f"attribution {args.action} needs KIND NAME SOURCE")
    if args.action == "set":
        if not args.ref_id:
            raise CliError("attribution set needs REF_ID (the plugin's id in its catalogue)")
        await ingest_store.set_attribution(db, args.kind, args.name, args.source, args.ref_id)
        if args.json:
            _print_json({"kind": args.kind, "name": args.name, "source": args.source, "ref_id": args.ref_id})
        else:
            print(f"{args.kind} {args.name!r} -> {args.source} {args.ref_id}; run `agnes-home reprocess` to "
                  "re-attribute events already stored")
        return 0
    removed = await ingest_store.remove_attribution(db, args.kind, args.name, args.source)
    if args.json:
        _print_json({"removed": removed})
    elif not removed:
        raise CliError(f"no {args.source} attribution for {args.kind} {args.name!r}")
    else:
        print(f"removed {removed} attribution(s)")
    return 0 if removed else 1


# -- tables ---------------------------------------------------------------------------

def _count_rows(path: str) -> int | None:
    """Data rows of a CSV (lines minus the header) or JSONL file; None for other formats."""
    suffix = path.lower().rsplit(".", 1)[-1]
    if suffix not in ("csv", "tsv", "jsonl", "ndjson"):
        return None
    lines = 0
    last = b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        lines += 1  # a last line without its newline is a row too
    return max(0, lines - 1) if suffix in ("csv", "tsv") else lines


@with_db
async def cmd_tables_register(args, settings, db) -> int:
    from pathlib import Path  # noqa: PLC0415

    from .store import tables  # noqa: PLC0415
    from .web.sync import private_reason  # noqa: PLC0415

    if not tables.valid_table_id(args.id):
        raise CliError(f"invalid table id {args.id!r}: use ^[A-Za-z0-9_.-]{{1,128}}$ without a leading dot")
    base = Path(settings.data_dir).resolve()
    path = Path(args.path)
    path = (path if path.is_absolute() else Path.cwd() / path).resolve()
    if not path.is_relative_to(base):
        raise CliError(f"{args.path} is not under the data directory {base}; copy it there first")
    if reason := private_reason(path.relative_to(base)):
        raise CliError(f"{args.path} cannot be published: {reason}")
    database = Path(settings.db_path).resolve()
    if path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        raise CliError(f"{args.path} cannot be published: it is this service's database")
    if not path.is_file():
        raise CliError(f"{args.path} is not a file")
    if args.rows is not None and args.rows < 0:
        raise CliError(f"--rows must not be negative, got {args.rows}")
    rows = args.rows if args.rows is not None else _count_rows(str(path))
    table = await tables.register(db, args.id, str(path.relative_to(base)), rows=rows, query_mode=args.query_mode,
                                  source_type=args.source_type, public=args.public)
    print(f"registered table {table.id} -> {table.path} ({table.rows if table.rows is not None else '?'} rows, "
          f"{'everyone' if table.public else 'granted users only'})")
    return 0


@with_db
async def cmd_tables_grant(args, settings, db) -> int:
    from .store import tables  # noqa: PLC0415

    if await tables.get(db, args.id) is None:
        raise CliError(f"no table {args.id!r}")
    user = await _user_or_fail(db, args.email)
    await tables.grant(db, args.id, user.id)
    print(f"granted {args.id} to {user.email}")
    return 0


@with_db
async def cmd_tables_list(args, settings, db) -> int:
    from .store import tables  # noqa: PLC0415

    found = await tables.list_all(db)
    if args.json:
        _print_json([{"id": t.id, "path": t.path, "rows": t.rows, "query_mode": t.query_mode,
                      "source_type": t.source_type, "public": t.public, "granted": granted}
                     for t, granted in found])
        return 0
    for t, granted in found:
        who = "everyone" if t.public else (", ".join(granted) or "nobody")
        print(f"{t.id}\t{t.path}\t{t.rows if t.rows is not None else '?'} rows\t{t.query_mode}\t{who}")
    return 0


# -- browser sign-ins ---------------------------------------------------------------

@with_db
async def cmd_sessions_list(args, settings, db) -> int:
    user_id = (await _user_or_fail(db, args.email)).id if args.email else None
    found = await sessions.list_sessions(db, user_id)
    if args.json:
        _print_json(found)
        return 0
    for s in found:
        print(f"{s.id}\t{s.email}\tsigned in {s.created_at}\texpires {s.expires_at}")
    return 0


@with_db
async def cmd_sessions_revoke(args, settings, db) -> int:
    user = await _user_or_fail(db, args.email)
    count = await sessions.end_for_user(db, user.id)
    print(f"ended {count} browser sign-in(s) of {user.email}; their cookies no longer work")
    return 0


# -- config ---------------------------------------------------------------------------

async def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    from .config import markdown_table, settings_json, settings_table, yaml_example  # noqa: PLC0415

    if args.what == "example":
        sys.stdout.write(yaml_example())
    elif args.what == "table":
        print(markdown_table())
    elif args.json:
        _print_json(settings_json(settings))
    else:
        print(settings_table(settings))
    return 0


# -- demo ----------------------------------------------------------------------------

@creating_db
async def cmd_demo(args, settings, db) -> int:
    from .demo import load_demo  # noqa: PLC0415

    token, reports = await load_demo(db, settings)
    # A wildcard address is where the server listens, not an address a browser can open.
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "", "::") else settings.host
    url = settings.public_url or f"http://{host}:{settings.port}"
    loaded = ", ".join(f"{email}: {r.processed} sessions" for email, r in reports.items())
    print(f"""
Demo data loaded into {settings.db_path} ({loaded}; table demo_customers).
  Sign in:  open {url}/login and paste the token below
  API:      curl -H "Authorization: Bearer <token>" {url}/api/me
  Also:     cleo@example.com has not set the client up (her /home shows the install hero);
            `agnes-home tokens issue cleo@example.com` gives a token to sign in as her.
Token for the demo analyst (shown once; tokens printed by earlier runs still work):
{token}""")
    return 0


# -- parser --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agnes-home", description="Agnes Home service and operator commands.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Command, help_text: str, parent=sub) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(fn=fn)
        return p

    add("serve", cmd_serve, "Serve the web app on AGNES_HOST:AGNES_PORT (SIGTERM stops it cleanly).")
    add("migrate", cmd_migrate, "Bring the database schema to the latest version.")

    p_users = sub.add_parser("users", help="Manage users.", description="Manage users.")
    users_sub = p_users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    p = add("add", cmd_users_add, "Add a user.", users_sub)
    p.add_argument("email", help="the user's email address (their identity; case does not matter)")
    p.add_argument("--name", default="", help="display name shown on /home")
    p.add_argument("--onboarded", action="store_true", help="mark the user onboarded already")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = add("list", cmd_users_list, "List users.", users_sub)
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p_tokens = sub.add_parser("tokens", help="Manage personal access tokens.",
                              description="Manage personal access tokens.")
    tokens_sub = p_tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    p = add("issue", cmd_tokens_issue, "Issue a token; it is printed once, alone on the last line.", tokens_sub)
    p.add_argument("email", help="the user the token belongs to")
    p.add_argument("--label", default="", help="a note to recognise the token by in `tokens list`")
    p = add("list", cmd_tokens_list, "List tokens (prefixes only; tokens are stored hashed).", tokens_sub)
    p.add_argument("--email", help="only this user's tokens")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = add("revoke", cmd_tokens_revoke, "Revoke a token by id or prefix, or all of a user's tokens.", tokens_sub)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--id", type=int, help="the token's id (first column of `tokens list`)")
    group.add_argument("--prefix", help="the start of the prefix `tokens list` shows (any unique part of it, with or "
                                        "without agnes_pat_), or the whole token; write --prefix=P when P starts with '-'")
    group.add_argument("--email", help="revoke every token of this user")

    p_sessions = sub.add_parser("sessions", help="Browser sign-ins (kept on the server).",
                                description="Browser sign-ins (kept on the server).")
    sessions_sub = p_sessions.add_subparsers(dest="sessions_command", required=True, metavar="ACTION")
    p = add("list", cmd_sessions_list, "List browser sign-ins that are still valid.", sessions_sub)
    p.add_argument("--email", help="only this user's sign-ins")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = add("revoke", cmd_sessions_revoke, "End every browser sign-in of a user at once (the browsers must "
            "sign in again; the user's tokens keep working).", sessions_sub)
    p.add_argument("--email", required=True, help="the user whose sign-ins end")

    p = add("ingest", cmd_ingest, "Ingest transcript files or directories for one user, with a progress bar.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="transcript files or directories (searched for *.jsonl)")
    p.add_argument("--user", required=True, metavar="EMAIL", help="the analyst the transcripts belong to")
    p.add_argument("--workers", type=_bounded(0, 64), default=None,
                   help="parser processes, 0 parses in a thread (default: AGNES_PARSE_WORKERS)")
    p.add_argument("--force", action="store_true", help="reparse even when the content hash is unchanged")
    p.add_argument("--json", action="store_true", help="print the final report as JSON")
    p.set_defaults(before_loop=_fork_parse_pool)

    p = add("reprocess", cmd_reprocess, "Force a full reprocess (of everything, or of one user's files).")
    p.add_argument("--user", metavar="EMAIL", help="only this user's files")

    p = add("quarantine", cmd_quarantine, "List quarantined files, or release them for another try.")
    p.add_argument("action", choices=["list", "retry"], help="list quarantined files, or retry them")
    p.add_argument("--id", type=int, help="retry only this file id")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = add("prune", cmd_prune, "Delete usage events and activity older than the retention period.")
    p.add_argument("--days", type=_bounded(1, MAX_RETENTION_DAYS), help="override AGNES_RETENTION_DAYS (1-36500)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = add("backup", cmd_backup, "Write a consistent copy of the SQLite database (VACUUM INTO) to PATH.")
    p.add_argument("path", help="where to write the copy (must not exist yet)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = add("copy-database", cmd_copy_database, "Copy the SQLite database (AGNES_DB_PATH) into an empty PostgreSQL "
            "database and check every table's row count (stop the service first).")
    p.add_argument("--to", required=True, metavar="URL", help="the target, postgresql://user@host:port/database "
                   "(empty; its schema is created)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = add("redact-stored", cmd_redact_stored, "Replace agnes_pat_ tokens in transcripts and local CLAUDE.md files "
            "uploaded before uploads were redacted (a one-off; the watched directory is left alone).")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = add("attribution", cmd_attribution,
            "Map skills, subagent types and commands to plugin sources (curated wins over flea).")
    p.add_argument("action", choices=["list", "set", "remove"], help="list the mappings, set one, or remove one")
    p.add_argument("kind", nargs="?", choices=["skill", "agent", "command"],
                   help="what NAME is: a skill, a subagent type or a slash command (set, remove)")
    p.add_argument("name", nargs="?", help="the skill, subagent type or command name (set, remove)")
    p.add_argument("source", nargs="?", choices=["curated", "flea"], help="the plugin source it belongs to (set, remove)")
    p.add_argument("ref_id", nargs="?", help="the plugin's id in that source (set)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p_tables = sub.add_parser("tables", help="Manage the data tables the sync manifest distributes.",
                              description="Manage the data tables the sync manifest distributes.")
    tables_sub = p_tables.add_subparsers(dest="tables_command", required=True, metavar="ACTION")
    p = add("register", cmd_tables_register, "Register (or update) a table: a file under the data directory.",
            tables_sub)
    p.add_argument("id", help="the table id clients see in the manifest")
    p.add_argument("path", help="the table's file, under AGNES_DATA_DIR")
    p.add_argument("--rows", type=int, help="row count (default: counted for CSV/JSONL files)")
    p.add_argument("--query-mode", choices=["local", "remote"], default="local",
                   help="local: clients download it (default); remote: clients skip it")
    p.add_argument("--source-type", default="", help="free text passed to clients in the manifest")
    p.add_argument("--public", action="store_true", help="readable by every user (default: granted users only)")
    p = add("grant", cmd_tables_grant, "Let one user read a table.", tables_sub)
    p.add_argument("id", help="the table id")
    p.add_argument("email", help="the user who may read it")
    p = add("list", cmd_tables_list, "List tables and who may read them.", tables_sub)
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = add("config", cmd_config, "Print the resolved settings, the YAML example or the README table.")
    p.add_argument("what", choices=["show", "example", "table"], nargs="?", default="show",
                   help="show: the resolved settings and where each came from (default); example: "
                        "instance.yaml.example; table: the README table")
    p.add_argument("--json", action="store_true", help="with show: the settings as JSON, each with its source")

    add("demo", cmd_demo, "Load demo users, transcripts and a table; print how to sign in.")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"agnes-home: invalid configuration: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, settings.log_level)
    for name, closest in unknown_environment():
        # Unknown YAML keys stop start-up; a variable cannot be refused as surely (the environment is
        # shared with everything else), but a misspelt one must not pass unseen.
        logger.warning("%s is set but is not a setting of agnes-home; ignored%s (`agnes-home config table` "
                       "lists them)", name, f" (did you mean {closest}?)" if closest else "")
    # Transcripts, the database and its backups are analysts' data: nothing this process
    # creates is readable by other local accounts (files 0600, folders 0700).
    os.umask(0o077)
    try:
        # A command may start something before the event loop and its threads exist (ingest: its
        # parse processes); it is shut down when the command ends, however it ends.
        before_loop = getattr(args, "before_loop", None)
        started = args.parse_pool = before_loop(args, settings) if before_loop is not None else None
        try:
            return asyncio.run(args.fn(args, settings))
        finally:
            if started is not None:
                started.shutdown(wait=True, cancel_futures=True)
    except ConfigError as exc:
        print(f"agnes-home: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except CliError as exc:
        print(f"agnes-home: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): not an error worth a traceback. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (MigrationError, sqlite3.Error) as exc:
        print(f"agnes-home: database {_database_name(settings)}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # an unwritable data directory, a file that vanished
        print(f"agnes-home: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if type(exc).__module__.startswith("asyncpg"):  # PostgreSQL refused (no such database, a password)
            print(f"agnes-home: database {_database_name(settings)}: {exc}", file=sys.stderr)
            return 1
        raise


def _database_name(settings: Settings) -> str:
    """Where the database is, for messages: the SQLite path, or the PostgreSQL URL without its password."""
    if not settings.database_url:
        return settings.db_path
    from urllib.parse import urlsplit  # noqa: PLC0415

    parts = urlsplit(settings.database_url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def run() -> None:
    """The console script: main(), then the process ends at once when nothing is left to wind down.

    By then every command has closed its database and stopped its processes; what interpreter
    shutdown would still do is free each of the process's objects and modules one by one, ~20-40 ms
    of CPU after a bulk ingest (a tenth of a small command's run). Output is flushed first. With a
    thread or a multiprocessing helper still about (one that needs its exit handlers), the normal exit.
    """
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # the reader went away (`| head`): as main() treats it
            pass
        except (OSError, ValueError) as exc:  # a full disk: as the interpreter's own exit, status 120
            code = code or 120
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(f"agnes-home: could not write the output: {exc}\n")
    if threading.active_count() == 1 and not _multiprocessing_helpers():
        os._exit(code)
    sys.exit(code)


def _multiprocessing_helpers() -> bool:
    """True while a child process, or multiprocessing's resource tracker, may need exit handlers."""
    mp = sys.modules.get("multiprocessing")
    if mp is None:
        return False
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    return bool(mp.active_children()) or (tracker is not None and tracker._resource_tracker._pid is not None)


if __name__ == "__main__":
    run()
