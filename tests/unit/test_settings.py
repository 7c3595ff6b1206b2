"""Budget arithmetic, distributions, orders and group sizes (docs/method.md §3)."""

from __future__ import annotations

import pytest

from mptui.engine.errors import BadInput
from mptui.engine.search.settings import (
    CalibrationSpec,
    PruneSettings,
    parse_distribution,
    parse_order,
    reference_group_sizes,
    resolve_group_sizes,
)

CAL = CalibrationSpec("x.txt", 0, 128)


def settings(target=0.22, distribution="44:52:4", order="blocks,mlp_channels,attn_heads", **kw):
    return PruneSettings.with_distribution(target, distribution, order, calibration=CAL, **kw)


def test_cumulative_targets_follow_the_order():
    targets = settings().targets()
    assert targets == pytest.approx(
        {"blocks": 0.22 * 0.44, "mlp_channels": 0.22 * 0.96, "attn_heads": 0.22}
    )


def test_shares_move_with_their_dimensions_when_the_order_changes():
    base = settings(order="blocks,mlp_channels,attn_heads", distribution="44:52:4")
    switched = base.with_order(("mlp_channels", "blocks", "attn_heads"))
    assert switched.shares == base.shares
    assert switched.targets() == pytest.approx(
        {"mlp_channels": 0.22 * 0.52, "blocks": 0.22 * 0.96, "attn_heads": 0.22}
    )


def test_distribution_is_read_in_the_order_given():
    s = settings(order="attn_heads,blocks,mlp_channels", distribution="1:2:1")
    assert s.shares == pytest.approx({"attn_heads": 0.25, "blocks": 0.5, "mlp_channels": 0.25})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1:2", "needs 3 shares"),
        ("a:b:c", "must be numbers"),
        ("-1:1:1", "non-negative"),
        ("0:0:0", "positive sum"),
    ],
)
def test_bad_distributions(text, message):
    with pytest.raises(BadInput, match=message):
        parse_distribution(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [("blocks,mlp,attn_heads", "unknown dimension 'mlp'"), ("blocks,blocks,attn_heads", "once")],
)
def test_bad_orders(text, message):
    with pytest.raises(BadInput, match=message):
        parse_order(text)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ratio_must_be_inside_zero_one(ratio):
    with pytest.raises(BadInput, match="strictly between 0 and 1"):
        settings(target=ratio)


@pytest.mark.parametrize("field", ["mlp_group", "attn_group", "block_count", "batch_size"])
@pytest.mark.parametrize("value", [0, -3, 2.5])
def test_counts_must_be_positive_whole_numbers(field, value):
    with pytest.raises(BadInput, match="positive whole number"):
        settings(**{field: value})


def test_blockpruner_faithful_needs_a_block_count_and_only_blocks():
    with pytest.raises(BadInput, match="needs block_count"):
        settings(faithful="blockpruner")
    s = settings(faithful="blockpruner", block_count=17)
    assert s.shares == {"blocks": 1.0, "mlp_channels": 0.0, "attn_heads": 0.0}


def test_reference_group_sizes():
    assert reference_group_sizes("meta-llama/Llama-2-7b-hf") == (1024, 128)
    assert reference_group_sizes("Qwen/Qwen1.5-14B") == (2048, 128)
    assert reference_group_sizes("meta-llama/Meta-Llama-3.1-8B") == (1024, 512)
    assert reference_group_sizes("meta-llama/Llama-3.2-3B") == (768, 384)
    assert reference_group_sizes("Qwen/Qwen2.5-7B") == (1024, 896)
    assert reference_group_sizes("some/other-model") is None


def test_group_size_rule_for_other_models():
    groups = resolve_group_sizes("local/tiny", 11008, 128, None, None)
    assert (groups.mlp, groups.attn) == (991, 128)
    assert "9%" in str(groups.source)
    given = resolve_group_sizes("meta-llama/Llama-2-7b-hf", 11008, 128, 512, None)
    assert (given.mlp, given.attn) == (512, 128)
