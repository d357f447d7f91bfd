"""An analyst's activity over a range of local days: daily series, by model, by project, with
estimated cost. Pure computation over the deduplicated per-user rows; neither HTTP nor SQL."""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Iterable, NamedTuple

import msgspec

from .cost import PriceTable

__all__ = ["Activity", "EventIn", "MessageIn", "PromptIn", "SessionRow", "dedupe_events", "session_rows",
           "sort_sessions", "summarise"]

_GAP = timedelta(seconds=600)  # FORMAT.md active_seconds: a longer gap starts a new block


class MessageIn(NamedTuple):
    ts: datetime
    session_id: str
    model: str | None
    speed: str | None
    input: int
    output: int
    cache_read: int
    cache_creation: int
    cache_5m: int
    cache_1h: int


class PromptIn(NamedTuple):
    ts: datetime
    session_id: str


class Tokens(msgspec.Struct):
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_creation: int = 0
    total: int = 0

    def add(self, m: MessageIn) -> None:
        self.input += m.input
        self.output += m.output
        self.cache_read += m.cache_read
        self.cache_creation += m.cache_creation
        self.total += m.input + m.output + m.cache_read + m.cache_creation


class Day(msgspec.Struct):
    date: str
    sessions: int = 0
    prompts: int = 0
    messages: int = 0
    tokens: Tokens = msgspec.field(default_factory=Tokens)
    cost_usd: float | None = 0.0  # the priced messages' (None: cost hidden from analysts)
    active_seconds: int = 0


class ModelRow(msgspec.Struct):
    model: str
    messages: int = 0
    tokens: Tokens = msgspec.field(default_factory=Tokens)
    cost_usd: float | None = 0.0  # None: the model has no known price


class ProjectRow(msgspec.Struct):
    project: str | None
    sessions: int = 0
    prompts: int = 0
    messages: int = 0
    tokens: Tokens = msgspec.field(default_factory=Tokens)
    cost_usd: float | None = 0.0
    active_seconds: int = 0


class Totals(msgspec.Struct):
    sessions: int = 0
    prompts: int = 0
    messages: int = 0
    tokens: Tokens = msgspec.field(default_factory=Tokens)
    cost_usd: float | None = 0.0
    unpriced_messages: int = 0  # their tokens count, their cost is unknown (never taken as free)
    fast_messages: int = 0  # priced at a fast-mode price
    active_seconds: int = 0


class Activity(msgspec.Struct):
    range: str
    tz: str
    price_table: str | None  # the price table's version, beside every cost (None: cost hidden)
    totals: Totals
    days: list[Day]
    by_model: list[ModelRow]
    by_project: list[ProjectRow]


@dataclass
class _Session:
    stamps: list[datetime] = field(default_factory=list)


def _blocks(stamps: list[datetime]) -> Iterable[tuple[datetime, datetime]]:
    stamps.sort()
    start = end = stamps[0]
    for ts in stamps[1:]:
        if ts - end > _GAP:
            yield start, end
            start = ts
        end = ts
    yield start, end


def summarise(range_name: str, zone_name: str, bounds: list[datetime], messages: Iterable[MessageIn],
              prompts: Iterable[PromptIn], projects: dict[str, str | None], prices: PriceTable,
              dates: list[str]) -> Activity:
    """Days are [bounds[i], bounds[i + 1]) in UTC, named by ``dates``; rows outside them are ignored.

    A session counts on a day, and for its project, when it has a prompt or a message in it. Active
    time is FORMAT.md's block rule over the session's prompts and messages, each block's span split
    at the local midnights it crosses.
    """
    days = [Day(d) for d in dates]
    first, last = bounds[0], bounds[-1]
    totals = Totals()
    models: dict[str, ModelRow] = {}
    by_project: dict[str | None, ProjectRow] = {}
    day_sessions: list[set[str]] = [set() for _ in days]
    sessions: dict[str, _Session] = defaultdict(_Session)

    def day_of(ts: datetime) -> int:
        return bisect_right(bounds, ts) - 1

    def project_row(session_id: str) -> ProjectRow:
        project = projects.get(session_id)
        row = by_project.get(project)
        if row is None:
            row = by_project[project] = ProjectRow(project)
        return row

    for m in messages:
        if not first <= m.ts < last:
            continue
        i = day_of(m.ts)
        day = days[i]
        day.messages += 1
        day.tokens.add(m)
        totals.messages += 1
        totals.tokens.add(m)
        day_sessions[i].add(m.session_id)
        sessions[m.session_id].stamps.append(m.ts)
        name = m.model or "(unknown)"
        model = models.get(name)
        if model is None:
            model = models[name] = ModelRow(name)
        model.messages += 1
        model.tokens.add(m)
        project = project_row(m.session_id)
        project.messages += 1
        project.tokens.add(m)
        cost = prices.message_cost(m.model, m.ts, m.speed, m.input, m.output, m.cache_read, m.cache_creation,
                                   m.cache_5m, m.cache_1h)
        if cost is None:
            totals.unpriced_messages += 1
            model.cost_usd = None
            continue
        totals.fast_messages += cost.fast
        day.cost_usd += cost.usd
        totals.cost_usd += cost.usd
        project.cost_usd += cost.usd
        if model.cost_usd is not None:
            model.cost_usd += cost.usd
    for p in prompts:
        if not first <= p.ts < last:
            continue
        i = day_of(p.ts)
        days[i].prompts += 1
        totals.prompts += 1
        day_sessions[i].add(p.session_id)
        sessions[p.session_id].stamps.append(p.ts)
        project_row(p.session_id).prompts += 1

    for i, found in enumerate(day_sessions):
        days[i].sessions = len(found)
    totals.sessions = len(sessions)
    for session_id, session in sessions.items():
        row = project_row(session_id)
        row.sessions += 1
        for start, end in _blocks(session.stamps):
            seconds = int((end - start).total_seconds())
            row.active_seconds += seconds
            totals.active_seconds += seconds
            # Split the block at each local midnight it crosses.
            i = day_of(start)
            while start < end:
                cut = min(end, bounds[i + 1])
                days[i].active_seconds += int((cut - start).total_seconds())
                start, i = cut, i + 1
    for day in days:
        day.cost_usd = round(day.cost_usd, 6)
    for row in by_project.values():
        row.cost_usd = round(row.cost_usd, 6)
    for model in models.values():
        if model.cost_usd is not None:
            model.cost_usd = round(model.cost_usd, 6)
    totals.cost_usd = round(totals.cost_usd, 6)
    return Activity(
        range=range_name, tz=zone_name, price_table=prices.version, totals=totals, days=days,
        by_model=sorted(models.values(), key=lambda r: (-r.tokens.total, r.model)),
        by_project=sorted(by_project.values(), key=lambda r: (-r.tokens.total, r.project or "")),
    )


# --- Sessions: FORMAT.md's sessions (copies belong to the session they were copied from), each
# with its activity inside the range, so that the sessions' sums equal the range's totals.


class EventIn(NamedTuple):
    ts: datetime
    session_id: str
    event_type: str  # tool_use | subagent | mcp_call | slash_command
    tool_name: str | None
    skill_name: str | None
    subagent_type: str | None
    command_name: str | None
    is_error: bool


class SessionRow(msgspec.Struct):
    session_id: str
    project: str | None
    started_at: str | None
    ended_at: str | None
    active_seconds: int
    prompts: int
    messages: int
    tokens: Tokens
    cost_usd: float | None  # None: none of its messages has a known price
    primary_model: str | None
    tool_calls: int
    tool_errors: int


def dedupe_events(events: Iterable[EventIn], owner_rank: dict[str, tuple]) -> list[EventIn]:
    """A resumed session's copy of a line repeats its tool uses (same name and timestamp) under another
    session: among sessions holding the same use, only the one that owns the copied line keeps it (the
    lowest ``owner_rank``). Uses within one session are never merged (parallel calls share a line)."""
    groups: dict[tuple, list[EventIn]] = defaultdict(list)
    for e in events:
        groups[(e.event_type, e.tool_name, e.skill_name, e.subagent_type, e.command_name, e.ts)].append(e)
    kept = []
    for group in groups.values():
        best = min((e.session_id for e in group), key=lambda s: (owner_rank.get(s, (True,)), s))
        kept.extend(e for e in group if e.session_id == best)
    return kept


def session_rows(messages: Iterable[MessageIn], prompts: Iterable[PromptIn], events: Iterable[EventIn],
                 projects: dict[str, str | None], prices: PriceTable,
                 to_text: Callable[[datetime], str]) -> list[SessionRow]:
    """Every session with a prompt or a message among the rows given, with its counters."""
    stamps: dict[str, list[datetime]] = defaultdict(list)
    counts: dict[str, list] = {}  # session -> [prompts, messages, Tokens, cost, priced, model counts]

    def entry(session_id: str) -> list:
        found = counts.get(session_id)
        if found is None:
            found = counts[session_id] = [0, 0, Tokens(), 0.0, False, {}]
        return found

    for p in prompts:
        entry(p.session_id)[0] += 1
        stamps[p.session_id].append(p.ts)
    for m in sorted(messages, key=lambda m: m.ts):
        e = entry(m.session_id)
        e[1] += 1
        e[2].add(m)
        stamps[m.session_id].append(m.ts)
        if m.model:
            e[5][m.model] = e[5].get(m.model, 0) + 1  # insertion order: the model seen first wins ties
        cost = prices.message_cost(m.model, m.ts, m.speed, m.input, m.output, m.cache_read, m.cache_creation,
                                   m.cache_5m, m.cache_1h)
        if cost is not None:
            e[3] += cost.usd
            e[4] = True
    tools: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for ev in events:
        if ev.event_type == "slash_command":
            continue
        if ev.event_type == "tool_use":
            tools[ev.session_id][0] += 1
        tools[ev.session_id][1] += ev.is_error
    rows = []
    for session_id, (n_prompts, n_messages, tokens, cost, priced, models) in counts.items():
        times = stamps[session_id]
        active = sum(int((end - start).total_seconds()) for start, end in _blocks(times))
        rows.append(SessionRow(
            session_id=session_id, project=projects.get(session_id), started_at=to_text(times[0]),
            ended_at=to_text(times[-1]), active_seconds=active, prompts=n_prompts, messages=n_messages, tokens=tokens,
            cost_usd=round(cost, 6) if priced else None,
            primary_model=max(models, key=models.__getitem__) if models else None,
            tool_calls=tools[session_id][0], tool_errors=tools[session_id][1]))
    return rows


SESSION_SORTS = {
    "start": lambda r: r.started_at or "",
    "project": lambda r: r.project or "",
    "duration": lambda r: _seconds_between(r.started_at, r.ended_at),
    "active": lambda r: r.active_seconds,
    "prompts": lambda r: r.prompts,
    "tokens": lambda r: r.tokens.total,
    "cost": lambda r: -1.0 if r.cost_usd is None else r.cost_usd,
    "model": lambda r: r.primary_model or "",
    "tool_calls": lambda r: r.tool_calls,
    "tool_errors": lambda r: r.tool_errors,
}


def _seconds_between(start: str | None, end: str | None) -> float:
    if not start or not end:
        return 0.0
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def sort_sessions(rows: list[SessionRow], sort: str) -> list[SessionRow]:
    """``sort`` is a key of SESSION_SORTS, descending unless prefixed with ``+`` (newest, largest first);
    ties by start, newest first, then id."""
    ascending = sort.startswith("+")
    key = SESSION_SORTS[sort.lstrip("+-")]
    rows = sorted(rows, key=lambda r: r.session_id)
    rows.sort(key=lambda r: r.started_at or "", reverse=True)
    rows.sort(key=key, reverse=not ascending)
    return rows
