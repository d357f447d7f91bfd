"""Users, personal access tokens and the audit log."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from datetime import timedelta

import msgspec

from ..db import BaseDatabase
from ..timeutil import from_store, to_store, utcnow

TOKEN_PREFIX = "agnes_pat_"
DISPLAYED_PREFIX = len(TOKEN_PREFIX) + 6  # what `tokens list` shows of a token
# last_used_at is refreshed at most this often, so authentication stays a read.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class User(msgspec.Struct, frozen=True):
    id: int
    email: str
    name: str
    onboarded: bool
    last_pull_at: str | None
    created_at: str


class Token(msgspec.Struct, frozen=True):
    id: int
    user_id: int
    email: str
    prefix: str
    label: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None


class UserExists(Exception):
    """A user with that email already exists."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _user(row) -> User | None:
    if row is None:
        return None
    return User(row["id"], row["email"], row["name"], bool(row["onboarded"]),
                row["last_pull_at"], row["created_at"])


_USER_COLS = "id, email, name, onboarded, last_pull_at, created_at"


def normalise_email(email: str) -> str:
    return email.strip().lower()


class InvalidEmail(ValueError):
    """Not one address: a user's email names them in logs, lists, the proxy header and admin lists."""


def check_email(email: str) -> str:
    """The normalised email, or InvalidEmail: one '@' between non-empty parts, no space or control."""
    email = normalise_email(email)
    local, at, domain = email.partition("@")
    if not (at and local and domain) or "@" in domain or any(c.isspace() or not c.isprintable() for c in email):
        raise InvalidEmail(f"{email!r} is not an email address (name@domain, no spaces)")
    return email


async def add_user(db: BaseDatabase, email: str, name: str = "", onboarded: bool = False) -> User:
    email = check_email(email)
    now = to_store(utcnow())
    async with db.transaction() as conn:
        async with conn.execute("SELECT 1 FROM users WHERE email = ?", (email,)) as cur:
            if await cur.fetchone():
                raise UserExists(email)
        async with conn.execute(
                "INSERT INTO users (email, name, onboarded, created_at) VALUES (?, ?, ?, ?) RETURNING id",
                (email, name, int(onboarded), now)) as cur:
            user_id = (await cur.fetchone())[0]
        await conn.execute(
            "INSERT INTO audit_log (user_id, action, source, created_at) VALUES (?, 'user_added', 'cli', ?)",
            (user_id, now))
    return User(user_id, email, name, onboarded, None, now)


async def get_user(db: BaseDatabase, user_id: int) -> User | None:
    """The user with this id (cached while the database is unchanged: every signed-in page asks)."""
    async def read() -> User | None:
        return _user(await db.fetchone(f"SELECT {_USER_COLS} FROM users WHERE id = ?", (user_id,)))

    return await db.cached_read(("user", user_id), read)


async def get_user_by_email(db: BaseDatabase, email: str) -> User | None:
    return _user(await db.fetchone(f"SELECT {_USER_COLS} FROM users WHERE email = ?",
                                   (normalise_email(email),)))


async def find_owner(db: BaseDatabase, name: str) -> User | None:
    """Resolve a watched-directory owner: a numeric user id, an email, or an email's local part."""
    if name.isdigit():
        # A user id; unless it is also some user's local part (2@example.com), which is ambiguous.
        by_id = await get_user(db, int(name)) if len(name) <= 18 else None  # past int64: no id
        by_local = await _by_local_part(db, name)
        return None if by_id and by_local and by_id.id != by_local.id else by_id or by_local
    if "@" in name:
        return await get_user_by_email(db, name)
    return await _by_local_part(db, name)


# SQLite's LIKE ignores ASCII case; PostgreSQL's ILIKE is its twin.
_LOCAL_PART_SQL = {"sqlite": f"SELECT {_USER_COLS} FROM users WHERE email LIKE ? ESCAPE '\\'",
                   "postgresql": f"SELECT {_USER_COLS} FROM users WHERE email ILIKE ? ESCAPE '\\'"}


async def _by_local_part(db: BaseDatabase, name: str) -> User | None:
    """The one user whose email's local part is name; None for none or several."""
    rows = await db.fetchall(_LOCAL_PART_SQL[db.dialect],
                             (name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "@%",))
    matches = [u for u in map(_user, rows) if u.email.split("@", 1)[0] == name.lower()]
    return matches[0] if len(matches) == 1 else None


async def list_users(db: BaseDatabase) -> list[User]:
    return [_user(r) for r in await db.fetchall(f"SELECT {_USER_COLS} FROM users ORDER BY id")]


async def issue_token(db: BaseDatabase, user_id: int, label: str = "") -> tuple[str, Token]:
    """Create a token; the plain value is returned once and only its hash is stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    prefix = token[:DISPLAYED_PREFIX]
    now = to_store(utcnow())
    async with db.transaction() as conn:
        async with conn.execute(
                "INSERT INTO api_tokens (user_id, token_hash, prefix, label, created_at) VALUES (?, ?, ?, ?, ?) "
                "RETURNING id", (user_id, hash_token(token), prefix, label, now)) as cur:
            token_id = (await cur.fetchone())[0]
        await conn.execute(
            "INSERT INTO audit_log (user_id, action, source, detail, created_at) VALUES (?, 'token_issued', 'cli', ?, ?)",
            (user_id, prefix, now))
        async with conn.execute("SELECT email FROM users WHERE id = ?", (user_id,)) as c:
            email = (await c.fetchone())["email"]
    return token, Token(token_id, user_id, email, prefix, label, now, None, None)


async def list_tokens(db: BaseDatabase, user_id: int | None = None) -> list[Token]:
    sql = ("SELECT t.id, t.user_id, u.email, t.prefix, t.label, t.created_at, t.last_used_at, t.revoked_at "
           "FROM api_tokens t JOIN users u ON u.id = t.user_id")
    params: tuple = ()
    if user_id is not None:
        sql += " WHERE t.user_id = ?"
        params = (user_id,)
    rows = await db.fetchall(sql + " ORDER BY t.id", params)
    return [Token(*tuple(r)) for r in rows]


async def active_tokens_by_prefix(db: BaseDatabase, prefix: str) -> list[Token]:
    """Active tokens whose displayed prefix starts with ``prefix`` (for `tokens revoke --prefix`)."""
    rows = await db.fetchall(
        "SELECT t.id, t.user_id, u.email, t.prefix, t.label, t.created_at, t.last_used_at, t.revoked_at "
        "FROM api_tokens t JOIN users u ON u.id = t.user_id "
        "WHERE t.revoked_at IS NULL AND substr(t.prefix, 1, ?) = ? ORDER BY t.id", (len(prefix), prefix))
    return [Token(*tuple(r)) for r in rows]


async def revoke_token(db: BaseDatabase, *, token_id: int | None = None, prefix: str | None = None,
                       user_id: int | None = None, token: str | None = None) -> int:
    """Revoke by id, by displayed prefix, by the token itself, or every token of a user; returns how many."""
    now = to_store(utcnow())
    if token_id is not None:
        where, params = "id = ?", (token_id,)
    elif token is not None:
        where, params = "token_hash = ?", (hash_token(token),)
    elif prefix is not None:
        where, params = "prefix = ?", (prefix,)
    elif user_id is not None:
        where, params = "user_id = ?", (user_id,)
    else:
        raise ValueError("nothing to revoke")
    async with db.transaction() as conn:
        cur = await conn.execute(
            f"UPDATE api_tokens SET revoked_at = ? WHERE revoked_at IS NULL AND {where}", (now, *params))
        count = cur.rowcount
        # Browser sign-ins made with a revoked token end with it (schema 0013).
        await conn.execute(
            "UPDATE browser_sessions SET ended_at = ? WHERE ended_at IS NULL AND token_id IN "
            f"(SELECT id FROM api_tokens WHERE revoked_at = ? AND {where})", (now, now, *params))
        await conn.execute(
            "INSERT INTO audit_log (action, source, detail, created_at) VALUES ('token_revoked', 'cli', ?, ?)",
            (f"{where.split(' ')[0]}={params[0]} count={count}", now))
    return count


async def authenticate(db: BaseDatabase, token: str) -> tuple[User, int] | None:
    """The user and token id a bearer token belongs to, or None (unknown, revoked, deleted user)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    digest = hash_token(token)
    # Cached while the database is unchanged (BaseDatabase.snapshot): a revocation is a commit, so the
    # next request reads afresh. Only tokens that exist are kept (no room for made-up ones).
    version = db.snapshot()
    key = ("token", digest)
    found = db.cached(version, key)
    if found is None:
        row = await db.fetchone(
            "SELECT t.id AS token_id, t.token_hash, t.last_used_at, u.id, u.email, u.name, u.onboarded, "
            "u.last_pull_at, u.created_at FROM api_tokens t JOIN users u ON u.id = t.user_id "
            "WHERE t.token_hash = ? AND t.revoked_at IS NULL", (digest,))
        if row is None or not hmac.compare_digest(row["token_hash"], digest):
            return None
        found = (_user(row), row["token_id"], from_store(row["last_used_at"]))
        db.cache(version, key, found)
    user, token_id, last_used = found
    now = utcnow()
    if last_used is None or now - last_used > LAST_USED_RESOLUTION:
        # Not awaited: authentication stays a read even while ingest (or a locked database)
        # holds the writer. Kept as stamped, so requests before the write lands do not repeat it.
        db.write_later("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (to_store(now), token_id),
                       what="stamp a token's last use")
        db.cache(version, key, (user, token_id, now))
    return user, token_id


async def token_active(db: BaseDatabase, token_id: int) -> bool:
    """Whether the token exists and is not revoked (cached like get_user)."""
    async def read() -> bool:
        return await db.fetchval("SELECT revoked_at IS NULL FROM api_tokens WHERE id = ?", (token_id,)) == 1

    return await db.cached_read(("token_active", token_id), read)


async def set_onboarded(db: BaseDatabase, user_id: int, onboarded: bool, source: str) -> bool:
    """Set the onboarded flag and audit it with its source; False when the user does not exist."""
    now = to_store(utcnow())
    async with db.transaction() as conn:
        cur = await conn.execute("UPDATE users SET onboarded = ? WHERE id = ?", (int(onboarded), user_id))
        if cur.rowcount == 0:
            return False
        await conn.execute(
            "INSERT INTO audit_log (user_id, action, source, detail, created_at) VALUES (?, ?, ?, ?, ?)",
            (user_id, "onboarded" if onboarded else "offboarded", source, None, now))
    return True


ONBOARDING_ACTIONS = ("onboarded", "offboarded")


async def has_onboarding_record(db: BaseDatabase, user_id: int) -> bool:
    """Whether the user was ever marked onboarded or offboarded (by any source)."""
    return await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM audit_log WHERE user_id = ? AND action IN (?, ?))",
        (user_id, *ONBOARDING_ACTIONS)) == 1


async def onboard_first_time(db: BaseDatabase, user_id: int, detail: str) -> bool:
    """Mark the user onboarded (source agnes_init, audited) only if they are not onboarded and have no
    onboarding record at all, checked in the writing transaction: it never undoes `onboarded off`.
    Returns whether it did."""
    now = to_store(utcnow())
    async with db.transaction() as conn:
        cur = await conn.execute(
            "UPDATE users SET onboarded = 1 WHERE id = ? AND onboarded = 0 AND NOT EXISTS "
            "(SELECT 1 FROM audit_log WHERE user_id = ? AND action IN (?, ?))",
            (user_id, user_id, *ONBOARDING_ACTIONS))
        if cur.rowcount == 0:
            return False
        await conn.execute(
            "INSERT INTO audit_log (user_id, action, source, detail, created_at) VALUES (?, ?, ?, ?, ?)",
            (user_id, "onboarded", "agnes_init", detail, now))
    return True


async def stamp_pull(db: BaseDatabase, user_id: int, when=None) -> None:
    await db.execute_write("UPDATE users SET last_pull_at = ? WHERE id = ?",
                           (to_store(when or utcnow()), user_id))


def stamp_pull_later(db: BaseDatabase, user_id: int, when) -> asyncio.Task:
    """Stamp the last pull without holding the caller; a failure (a locked database) is logged."""
    return db.write_later("UPDATE users SET last_pull_at = ? WHERE id = ?", (to_store(when), user_id),
                          what="stamp last_pull_at")


async def audit_rows(db: BaseDatabase, user_id: int) -> list[dict]:
    rows = await db.fetchall(
        "SELECT action, source, detail, created_at FROM audit_log WHERE user_id = ? ORDER BY id", (user_id,))
    return [dict(r) for r in rows]
