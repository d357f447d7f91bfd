"""Demo data for `make run`: analysts, realistic transcripts relative to now, and a table to pull."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import msgspec

from .config import Settings
from .db import BaseDatabase
from .ingest.bulk import Report, ingest_paths
from .store import ingest as ingest_store
from .store import tables, users
from .timeutil import utcnow

# Ana and Ben are onboarded analysts with a week of activity; Cleo has not set the client up, so
# her /home shows the install hero (README "Two commands" says how to sign in as her).
DEMO_USERS = (
    ("ana@example.com", "Ana Analyst", True),
    ("ben@example.com", "Ben Builder", True),
    ("cleo@example.com", "Cleo Newcomer", False),
)
PROJECTS = ("/home/{u}/work/churn-model", "/home/{u}/work/revenue-dash", "/home/{u}/work/pricing",
            "/home/{u}/work/marketing-mix")
PROMPTS = ("Which customers churned last month, by plan?", "Rebuild the revenue extract for Q4.",
           "Plot weekly active users against signups.", "Why does the cohort table have duplicates?",
           "Summarise the pricing experiment results.", "Draft the memo for the finance review.",
           "Check the data quality of the orders table.", "Compare EU and US conversion rates.")
TOOLS = ("Bash", "Read", "Grep", "Edit", "Write", "mcp__keboola__query_data")
MODELS = ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929", "claude-opus-4-1-20250805")
_encoder = msgspec.json.Encoder()


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def demo_session(rng: random.Random, local_part: str, start: datetime) -> tuple[str, bytes]:
    """One Claude Code session as its JSONL transcript: prompts, streamed answers, tools, a command."""
    session_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    cwd = rng.choice(PROJECTS).format(u=local_part)
    model = rng.choice(MODELS)
    lines: list[dict] = []
    now = start
    parent = None

    def base(kind: str) -> dict:
        nonlocal parent
        line_uuid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        line = {"parentUuid": parent, "isSidechain": False, "userType": "external", "cwd": cwd,
                "sessionId": session_id, "version": "2.0.31", "type": kind, "uuid": line_uuid,
                "timestamp": _ts(now)}
        parent = line_uuid
        return line

    if rng.random() < 0.3:
        lines.append({**base("user"), "message": {"role": "user", "content":
                      "<command-name>/clear</command-name>\n<command-message>clear</command-message>"}})
    for _ in range(rng.randint(1, 4)):
        now += timedelta(seconds=rng.randint(20, 240))
        lines.append({**base("user"), "message": {"role": "user", "content": rng.choice(PROMPTS)}})
        for _ in range(rng.randint(1, 3)):
            now += timedelta(seconds=rng.randint(2, 20))
            msg_id = f"msg_demo{rng.getrandbits(48):012x}"
            usage = {"input_tokens": rng.randint(4, 60), "cache_creation_input_tokens": rng.randint(0, 4000),
                     "cache_read_input_tokens": rng.randint(1000, 40000)}
            out = rng.randint(40, 900)
            tool = rng.choice(TOOLS) if rng.random() < 0.6 else None
            blocks = [{"type": "text", "text": "Working on it."}]
            if tool:
                blocks.append({"type": "tool_use", "id": f"toolu_{rng.getrandbits(48):012x}", "name": tool,
                               "input": {"command": "make extract"}})
            for i, block in enumerate(blocks):  # one line per content block, as Claude Code streams them
                lines.append({**base("assistant"), "requestId": f"req_{msg_id[4:]}", "message": {
                    "model": model, "id": msg_id, "type": "message", "role": "assistant", "content": [block],
                    "usage": {**usage, "output_tokens": out if i == len(blocks) - 1 else out // 3}}})
            if tool:
                now += timedelta(seconds=rng.randint(1, 15))
                lines.append({**base("user"), "message": {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": blocks[-1]["id"], "content": "ok " * rng.randint(5, 400),
                     "is_error": rng.random() < 0.1}]}})
    return session_id, b"".join(_encoder.encode(line) + b"\n" for line in lines)


def write_demo_transcripts(folder: Path, local_part: str, now: datetime, seed: int) -> list[str]:
    """About a week of sessions ending now, several inside the last 24 hours."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(14):
        hours_ago = rng.uniform(0.2, 20) if index < 5 else rng.uniform(24, 24 * 7)
        _, data = demo_session(rng, local_part, now - timedelta(hours=hours_ago))
        path = folder / f"demo-{index:02d}.jsonl"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


async def load_demo(db: BaseDatabase, settings: Settings, now: datetime | None = None) -> tuple[str, dict[str, Report]]:
    """Create the demo users, transcripts and table (idempotent); return a new token for the first user
    (earlier demo tokens stay valid)."""
    now = now or utcnow()
    reports = {}
    for seed, (email, name, onboarded) in enumerate(DEMO_USERS):
        user = await users.get_user_by_email(db, email) or await users.add_user(db, email, name, onboarded)
        if not onboarded:
            continue
        folder = Path(settings.data_dir) / "sessions" / str(user.id)
        paths = write_demo_transcripts(folder, email.split("@")[0], now, seed)
        await ingest_store.register_files(db, user.id, paths, "upload", now)
        reports[email] = await ingest_paths(db, user.id, paths, workers=0, clock=lambda: now)
        # As if each had run `agnes pull` (Last sync would read "never" otherwise): Ana minutes ago,
        # Ben yesterday, so both the minutes and the hours of the relative time show.
        await users.stamp_pull(db, user.id, now - (timedelta(minutes=3) if seed == 0 else timedelta(hours=26)))
    table_dir = Path(settings.data_dir) / "tables"
    table_dir.mkdir(parents=True, exist_ok=True)
    csv = table_dir / "demo_customers.csv"
    rng = random.Random(7)
    plans = ("free", "team", "enterprise")
    csv.write_text("customer_id,plan,mrr_eur,churned\n" + "".join(
        f"{i},{rng.choice(plans)},{rng.randint(0, 5000)},{str(rng.random() < 0.1).lower()}\n" for i in range(1, 501)))
    await tables.register(db, "demo_customers", "tables/demo_customers.csv", rows=500, public=True,
                          source_type="demo")
    ana = await users.get_user_by_email(db, DEMO_USERS[0][0])
    assert ana is not None
    # A new token each run (only hashes are stored, so an earlier one cannot be shown again); the
    # earlier ones keep working, so a browser signed in after the last `make run` stays signed in.
    token, _ = await users.issue_token(db, ana.id, "demo")
    return token, reports
