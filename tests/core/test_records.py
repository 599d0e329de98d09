"""tale_integrations.core.records: what a refusal says changed between two run headers."""

from __future__ import annotations

from tale_integrations.core.records import diff_summary


def test_diff_summary_names_nested_keys_and_counts_the_rest():
    assert diff_summary({"model": "a", "policy": {"min_budget": 1}}, {"model": "a", "policy": {"min_budget": 2}}) \
        == "policy.min_budget: 1 -> 2"
    old, new = {f"k{i}": i for i in range(6)}, {f"k{i}": -i for i in range(6)}
    assert diff_summary(old, new) == "k1: 1 -> -1; k2: 2 -> -2; k3: 3 -> -3; k4: 4 -> -4; and 1 more"
    assert diff_summary({"x": 1}, {}) == "x: 1 -> None"
    assert diff_summary({"x": {}}, {}) == "the values differ"
