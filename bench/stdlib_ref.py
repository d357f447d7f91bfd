"""The reference: the same per-file counting as service/ingest/parser.py, done the
straightforward way (``json.loads`` per line, dicts, no views), with nothing stored.

    python bench/stdlib_ref.py PATH...     # prints totals and MB/s as JSON

Used by bench/ingest_bench.py as the "4x" baseline and as a cross-check: its totals
(lines, skipped lines, assistant messages, tokens, prompts, tool uses) must equal the
service's for the same corpus.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from datetime import datetime, timedelta, timezone

HARNESS = ("<command-name>", "<command-message>", "<command-args>", "<local-command-stdout>",
           "<local-command-stderr>", "<local-command-caveat>", "<system-reminder>", "<task-notification>",
           "[Request interrupted by user", "Caveat: The messages below were generated")
COMMAND_RE = re.compile(r"<command-name>/([A-Za-z][\w:-]*)</command-name>")


def _ts(text):
    try:
        dt = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _tok(v):
    return v if type(v) is int and v >= 0 else 0


def count_file(path: str) -> dict:
    """Counters of one file, FORMAT.md rules, stdlib only."""
    lines = skipped = user_messages = 0
    session = project = None
    messages: dict[str, list] = {}
    prompts: set[str] = set()
    tools: dict[str, str] = {}
    errors: set[str] = set()
    slash = 0
    stamps: list[datetime] = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if raw.isspace():
                continue
            lines += 1
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                skipped += 1
                continue
            if not isinstance(obj, dict) or ("message" in obj and not isinstance(obj["message"], dict)):
                skipped += 1
                continue
            msg = obj.get("message") or {}
            kind = obj.get("type")
            if kind == "assistant" and msg.get("model") == "<synthetic>":
                continue
            ts = _ts(obj.get("timestamp"))
            if ts is not None:
                stamps.append(ts)
            session = session or obj.get("sessionId")
            project = project or obj.get("cwd")
            if kind == "assistant" and "message" in obj:
                key = msg.get("id") or obj.get("uuid") or f"line:{lineno}"
                usage = msg.get("usage") or {}
                vals = [_tok(usage.get(k, 0)) for k in ("input_tokens", "output_tokens",
                                                         "cache_read_input_tokens", "cache_creation_input_tokens")]
                old = messages.get(key)
                messages[key] = vals if old is None else [max(a, b) for a, b in zip(old, vals)]
                content = msg.get("content")
                if isinstance(content, list):
                    for block in content:
                        if isinstance(block, dict) and block.get("type") == "tool_use":
                            tools.setdefault(block.get("id") or f"{lineno}:{len(tools)}", block.get("name"))
            elif kind == "user":
                user_messages += 1
                content = msg.get("content")
                quoting = obj.get("isMeta") is True or obj.get("isCompactSummary") is True
                texts = [content] if isinstance(content, str) else [
                    b.get("text") for b in content or () if isinstance(b, dict) and b.get("type") == "text"
                    and isinstance(b.get("text"), str)]
                has_result = isinstance(content, list) and any(
                    isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
                for b in content if isinstance(content, list) else ():
                    if isinstance(b, dict) and b.get("type") == "tool_result" and b.get("is_error") is True:
                        errors.add(b.get("tool_use_id"))
                if not quoting:
                    slash += sum(len(COMMAND_RE.findall(t)) for t in texts if t)
                typed = any(t and t.strip() and not t.lstrip().startswith(HARNESS) for t in texts)
                if typed and not has_result and not quoting and obj.get("isSidechain") is not True:
                    prompts.add(obj.get("uuid") or f"line:{lineno}")
            elif kind == "attachment" and (obj.get("attachment") or {}).get("type") == "queued_command":
                prompts.add(obj.get("uuid") or f"line:{lineno}")
    stamps.sort()
    active = timedelta()
    if stamps:
        block_start = prev = stamps[0]
        for ts in stamps[1:]:
            if ts - prev > timedelta(seconds=600):
                active += prev - block_start
                block_start = ts
            prev = ts
        active += prev - block_start
    tokens = [sum(m[i] for m in messages.values()) for i in range(4)]
    return {"lines": lines, "skipped": skipped, "session": session, "project": project,
            "user_messages": user_messages, "assistant_messages": len(messages), "prompts": len(prompts),
            "tool_uses": len(tools), "tool_errors": len(errors & set(tools)), "slash_commands": slash,
            "tokens": tokens, "active_seconds": int(active.total_seconds())}


def expand(paths: list[str]) -> list[str]:
    out = []
    for p in paths:
        if os.path.isdir(p):
            for d, _, names in os.walk(p):
                out.extend(os.path.join(d, n) for n in names if n.endswith(".jsonl"))
        else:
            out.append(p)
    return sorted(out)


def run(paths: list[str]) -> dict:
    files = expand(paths)
    started = time.perf_counter()
    total = {"files": len(files), "bytes": 0, "lines": 0, "skipped": 0, "assistant_messages": 0, "prompts": 0,
             "tool_uses": 0, "tokens": 0}
    for f in files:
        r = count_file(f)
        total["bytes"] += os.path.getsize(f)
        for k in ("lines", "skipped", "assistant_messages", "prompts", "tool_uses"):
            total[k] += r[k]
        total["tokens"] += sum(r["tokens"])
    total["seconds"] = round(time.perf_counter() - started, 3)
    total["mb_per_s"] = round(total["bytes"] / 1e6 / total["seconds"], 2)
    return total


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1:])))
