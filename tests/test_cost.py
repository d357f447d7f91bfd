"""FORMAT.md "Cost" from the price library: each figure is worked out here with genai-prices' own
calc_price (input_tokens there is the whole prompt, cache included), never copied from service.cost."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from genai_prices import Usage, calc_price

from service.cost import load_price_table

AT = datetime(2026, 11, 21, 6, 0, tzinfo=timezone.utc)
OPUS = "claude-opus-4-5-20251101"
SONNET = "claude-sonnet-4-5-20250929"


def library(model: str, i: int, o: int, cr: int, five: int, one_hour: int) -> float:
    usage = Usage(input_tokens=i + cr + five + one_hour, output_tokens=o, cache_read_tokens=cr,
                  cache_write_tokens=five + one_hour, cache_write_5m_tokens=five, cache_write_1h_tokens=one_hour)
    return float(calc_price(usage, model, provider_id="anthropic", genai_request_timestamp=AT).total_price)


@pytest.fixture(scope="module")
def table():
    return load_price_table(None)


def test_the_version_of_the_price_table_is_named(table):
    from importlib.metadata import version

    assert table.version == f"genai-prices {version('genai-prices')}"


def test_a_split_cache_write_is_priced_at_the_5_minute_and_1_hour_prices(table):
    # carol's msg_09MainA: 1,000 tokens written for 5 minutes, 3,000 for an hour.
    cost = table.message_cost(OPUS, AT, None, 6, 150, 12000, 4000, 1000, 3000)
    assert cost.usd == pytest.approx(library(OPUS, 6, 150, 12000, 1000, 3000), rel=1e-12)
    assert cost.usd == pytest.approx((6 * 5 + 150 * 25 + 12000 * 0.5 + 1000 * 6.25 + 3000 * 10) / 1e6)
    assert not cost.fast


def test_without_a_split_every_cache_write_is_a_5_minute_write(table):
    cost = table.message_cost(OPUS, AT, None, 6, 150, 12000, 4000, 0, 0)
    assert cost.usd == pytest.approx(library(OPUS, 6, 150, 12000, 4000, 0), rel=1e-12)


def test_a_split_short_of_the_flat_field_leaves_the_rest_at_the_5_minute_price(table):
    cost = table.message_cost(OPUS, AT, None, 0, 0, 0, 5000, 0, 2000)
    assert cost.usd == pytest.approx(library(OPUS, 0, 0, 0, 3000, 2000), rel=1e-12)


def test_a_request_above_200k_prompt_tokens_is_priced_wholly_at_the_long_context_tier(table):
    below = table.message_cost(SONNET, AT, None, 150000, 1000, 50000, 0, 0, 0)  # 200,000: not above
    above = table.message_cost(SONNET, AT, None, 150000, 1000, 50001, 0, 0, 0)
    assert below.usd == pytest.approx(library(SONNET, 150000, 1000, 50000, 0, 0), rel=1e-12)
    assert above.usd == pytest.approx(library(SONNET, 150000, 1000, 50001, 0, 0), rel=1e-12)
    assert above.usd > 1.9 * below.usd  # the input price doubles for the whole request


def test_fast_mode_uses_the_fast_price_only_where_the_table_has_one(table):
    fast = table.message_cost("claude-opus-4-8", AT, "fast", 1000, 1000, 0, 0, 0, 0)
    standard = table.message_cost("claude-opus-4-8", AT, None, 1000, 1000, 0, 0, 0, 0)
    assert fast.fast and fast.usd == pytest.approx(2 * standard.usd)
    no_fast_price = table.message_cost(OPUS, AT, "fast", 1000, 1000, 0, 0, 0, 0)
    assert not no_fast_price.fast and no_fast_price.usd == pytest.approx(library(OPUS, 1000, 1000, 0, 0, 0))


@pytest.mark.parametrize("model", ["gpt-4o", "gemini-2.5-pro", "claude-imaginary-9", "", None, "<synthetic>"])
def test_a_model_without_a_known_price_is_unpriced_not_free(table, model):
    assert table.message_cost(model, AT, None, 10, 10, 0, 0, 0, 0) is None


def test_an_operators_price_file_overrides_the_library(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text("models:\n"
                    "  claude-sonnet-4-5:\n    input: 2\n    output: 10\n    cache_read: 0.2\n    cache_write: 2.5\n"
                    "  claude-imaginary-9:\n    input: 1\n    output: 1\n    cache_read: 1\n    cache_write: 1\n"
                    "    cache_write_1h: 4\n")
    table = load_price_table(str(path))
    assert table.version.startswith("genai-prices ") and "+ prices.yaml (" in table.version
    # by the library's model name: every dated release of it
    assert table.message_cost(SONNET, AT, None, 1_000_000, 0, 0, 0, 0, 0).usd == pytest.approx(2.0)
    # a model the library does not know; its 1-hour write price from the file
    assert table.message_cost("claude-imaginary-9", AT, None, 0, 0, 0, 2_000_000, 0, 1_000_000).usd == \
        pytest.approx(1.0 + 4.0)
    # others keep the library's prices
    assert table.message_cost(OPUS, AT, None, 6, 150, 12000, 4000, 0, 0).usd == \
        pytest.approx(library(OPUS, 6, 150, 12000, 4000, 0))


def test_a_price_file_with_an_unknown_key_is_refused_naming_it(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text("models:\n  x:\n    input: 1\n    output: 1\n    cache_read: 1\n    cache_write: 1\n    extra: 2\n")
    with pytest.raises(ValueError, match="extra"):
        load_price_table(str(path))


def test_every_prompt_size_where_a_library_price_turns_is_a_stored_tier(table):
    """Summed reads and schema 0014 group messages by PRICE_TIERS: a library update with another
    threshold must fail here, not misprice quietly."""
    from genai_prices import data_snapshot
    from genai_prices.data_snapshot import find_provider_by_id

    from service.cost import PRICE_TIERS

    provider = find_provider_by_id(data_snapshot.get_snapshot().providers, "anthropic")
    seen = set()
    for model in provider.models:
        prices = table.prices(model.id, AT)
        if prices is not None:
            seen |= {tier.above for tier in prices.tiers}
    assert seen == set(PRICE_TIERS) and list(PRICE_TIERS) == sorted(PRICE_TIERS)


def test_a_group_of_messages_costs_the_sum_of_their_costs(table):
    one = table.message_cost(OPUS, AT, None, 6, 150, 12000, 4000, 1000, 3000).usd
    two = table.message_cost(OPUS, AT, None, 8, 400, 16000, 600, 600, 0).usd
    group = table.group_cost(OPUS, AT, False, 0, 14, 550, 28000, 1600, 3000).usd
    assert group == pytest.approx(one + two, rel=1e-12)


def test_a_group_in_the_100k_tier_is_priced_as_its_messages_are(table):
    """claude-haiku-5-5 turns at 100,000 prompt tokens: a group of that tier (tier 1) must not be taken
    for one below it, as a single long-context flag at 200,000 did."""
    from service.cost import tier_prompt

    one = table.message_cost("claude-haiku-5-5", AT, None, 140_000, 500, 10_000, 0, 0, 0)
    below = table.message_cost("claude-haiku-5-5", AT, None, 90_000, 500, 0, 0, 0, 0)
    group = table.group_cost("claude-haiku-5-5", AT, False, tier_prompt(1), 140_000, 500, 10_000, 0, 0)
    assert group.usd == pytest.approx(one.usd, rel=1e-12)
    assert one.usd / 150_500 > below.usd / 90_500  # the tier's price per token is higher
