"""Estimated cost of a message (FORMAT.md "Cost"), from genai-prices' offline price data or an
operator's price file; pure computation, neither HTTP nor SQL."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["PRICE_TIERS", "MessageCost", "PriceTable", "Rates", "load_price_table", "tier_sql"]

_PER_MTOK = 1_000_000
_FAST = "fast"
# FORMAT.md "Cost": every prompt size (input + cache read + cache write) above which some model's price
# turns (genai-prices 0.2.5: 100k for claude-haiku-5-5, 200k for long context). Summed reads group
# messages by how many of these their prompt passes (a message's "tier"), so each group is priced from
# its sums; schema 0014 stores that tier. tests/test_cost.py fails when the library adds another.
PRICE_TIERS = (100_000, 200_000)


def tier_sql(prompt: str) -> str:
    """SQL for the tier of a prompt-size expression: how many of PRICE_TIERS it passes."""
    return " + ".join(f"CAST({prompt} > {t} AS INTEGER)" for t in PRICE_TIERS)  # PostgreSQL adds no booleans


def tier_prompt(tier: int) -> int:
    """A prompt size of that tier, to pick its rates."""
    return PRICE_TIERS[tier - 1] + 1 if tier else 0


class Rates(msgspec.Struct, frozen=True):
    """US dollars per million tokens."""

    input: float
    output: float
    cache_read: float
    cache_write_5m: float
    cache_write_1h: float


class _Tier(msgspec.Struct, frozen=True):
    above: int  # prompt tokens (input + cache read + cache write) of the request above which it applies
    rates: Rates


class ModelPrices(msgspec.Struct, frozen=True):
    base: Rates
    tiers: tuple[_Tier, ...] = ()
    fast: Rates | None = None  # fast mode, where the table has a price for it

    def rates(self, prompt_tokens: int, fast: bool) -> tuple[Rates, bool]:
        """The rates of one request, and whether its fast-mode price applied."""
        if fast and self.fast is not None:
            return self.fast, True
        chosen = self.base
        for tier in self.tiers:  # ascending: the highest threshold passed wins, for the whole request
            if prompt_tokens > tier.above:
                chosen = tier.rates
        return chosen, False


class MessageCost(msgspec.Struct, frozen=True):
    usd: float
    fast: bool  # priced at the fast-mode price


# --- The operator's file: negotiated prices that override the library, model by model.


class _FileRates(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    input: float
    output: float
    cache_read: float
    cache_write: float  # 5-minute writes
    cache_write_1h: float | None = None  # default: the 5-minute price

    def rates(self) -> Rates:
        one_hour = self.cache_write if self.cache_write_1h is None else self.cache_write_1h
        return Rates(self.input, self.output, self.cache_read, self.cache_write, one_hour)


class _FileModel(_FileRates, forbid_unknown_fields=True, frozen=True):
    fast: _FileRates | None = None


class _PriceFile(msgspec.Struct, forbid_unknown_fields=True):
    # model name (exact, or the name genai-prices gives the model, such as "claude-sonnet-4-5") -> prices
    models: dict[str, _FileModel] = {}


@dataclass
class PriceTable:
    """Resolves a model at a moment to its prices; `version` is shown beside every cost."""

    version: str
    overrides: dict[str, ModelPrices] = field(default_factory=dict)

    def prices(self, model: str | None, at: datetime) -> ModelPrices | None:
        """None: no known price (another provider's model, or one the table does not list)."""
        if not model:
            return None
        found = self.overrides.get(model)
        if found is not None:
            return found
        library_id, prices = _library_prices(model.lower(), at.date())
        if library_id is not None and library_id in self.overrides:
            return self.overrides[library_id]
        return prices

    def message_cost(self, model: str | None, at: datetime, speed: str | None, input_tokens: int,
                     output_tokens: int, cache_read: int, cache_creation: int, cache_5m: int,
                     cache_1h: int) -> MessageCost | None:
        """One deduplicated message's cost; None when its model has no known price (unpriced, not free).

        Cache writes: the 1-hour part of the split at the 1-hour price, the rest of the flat
        ``cache_creation`` (all of it without a split) at the 5-minute price. ``cache_5m`` is only
        the split's own figure: the flat field stays the token count, as everywhere else.
        """
        one_hour = min(cache_1h, cache_creation)
        return self.group_cost(model, at, speed == _FAST, input_tokens + cache_read + cache_creation,
                               input_tokens, output_tokens, cache_read, cache_creation - one_hour, one_hour)

    def rates(self, model: str | None, at: datetime, fast: bool, prompt_tokens: int) -> tuple[Rates, bool] | None:
        """A request's rates (per million tokens) and whether its fast-mode price applied; None when the
        model has no known price."""
        prices = self.prices(model, at)
        return None if prices is None else prices.rates(prompt_tokens, fast)

    def group_cost(self, model: str | None, at: datetime, fast: bool, prompt_tokens: int, input_tokens: int,
                   output_tokens: int, cache_read: int, five_min: int, one_hour: int) -> MessageCost | None:
        """The cost of messages that share a model, a speed and a tier (``prompt_tokens``: one of their
        requests' prompt size), from their summed counters: prices are per token, so the sum of the
        messages' costs. None when the model has no known price."""
        found = self.rates(model, at, fast, prompt_tokens)
        if found is None:
            return None
        rates, fast = found
        return MessageCost(cost_of(rates, input_tokens, output_tokens, cache_read, five_min, one_hour), fast)


def cost_of(rates: Rates, input_tokens: float, output_tokens: float, cache_read: float, five_min: float,
            one_hour: float) -> float:
    """US dollars of these token counts at these rates."""
    return (input_tokens * rates.input + output_tokens * rates.output + cache_read * rates.cache_read
            + five_min * rates.cache_write_5m + one_hour * rates.cache_write_1h) / _PER_MTOK


def _library_version() -> str:
    from importlib.metadata import version

    return f"genai-prices {version('genai-prices')}"


def _decimal(value: Any) -> float:
    return float(value) if isinstance(value, Decimal) else 0.0


def _from_library(price: Any) -> ModelPrices:
    """genai-prices' ModelPrice (flat or tiered by prompt size) as our rates."""
    from genai_prices.types import TieredPrices

    keys = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok")
    values = [getattr(price, key, None) for key in keys]
    if values[4] is None:  # no 1-hour price listed: the 5-minute one
        values[4] = values[3]
    thresholds = sorted({t.start for v in values if isinstance(v, TieredPrices) for t in v.tiers})

    def at(threshold: int | None) -> Rates:
        out = []
        for value in values:
            if isinstance(value, TieredPrices):
                chosen = value.base
                for tier in value.tiers:
                    if threshold is not None and tier.start <= threshold:
                        chosen = tier.price
                out.append(_decimal(chosen))
            else:
                out.append(_decimal(value))
        return Rates(*out)

    # genai-prices' tier "start" is the first prompt size priced higher: "above 200,000" is start 200,000.
    return ModelPrices(at(None), tuple(_Tier(t, at(t)) for t in thresholds))


@lru_cache(maxsize=4096)
def _library_prices(model: str, day: date) -> tuple[str | None, ModelPrices | None]:
    """(the library's model id, its prices on that day) among Anthropic's models only."""
    from datetime import time, timezone

    from genai_prices import data_snapshot
    from genai_prices.data_snapshot import find_provider_by_id

    provider = find_provider_by_id(data_snapshot.get_snapshot().providers, "anthropic")
    info = provider.find_model(model) if provider is not None else None
    if info is None:
        return None, None
    moment = datetime.combine(day, time(12), tzinfo=timezone.utc)
    prices = _from_library(info.get_prices(moment))
    fast = None
    for variant in info.price_variants or ():
        if variant.when == {"speed": _FAST} and (variant.constraint is None or variant.constraint.active(moment)):
            merged = info.get_prices(moment, {"speed": _FAST})
            fast = _from_library(merged).base
            break
    return info.id, ModelPrices(prices.base, prices.tiers, fast)


def load_price_table(path: str | None) -> PriceTable:
    """The library's table, with an operator's price file (YAML or JSON) on top when given.

    A file that does not parse stops start-up with its path and msgspec's message (``ValueError``).
    """
    version = _library_version()
    if not path:
        return PriceTable(version)
    raw = Path(path).read_bytes()
    try:
        parsed = msgspec.yaml.decode(raw, type=_PriceFile)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise ValueError(f"price file {path}: {exc}") from None
    overrides = {name: ModelPrices(m.rates(), (), m.fast.rates() if m.fast else None)
                 for name, m in parsed.models.items()}
    digest = hashlib.sha256(raw).hexdigest()[:8]
    return PriceTable(f"{version} + {Path(path).name} ({digest})", overrides)
