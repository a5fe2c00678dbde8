"""Methods compared pair by pair and structure by structure (``model.training.comparison``),
as ``riir evaluate`` writes them to comparison.md."""

import math

import pytest
from scipy import stats

from model.training import comparison


def test_the_paired_difference_counts_only_the_pairs_both_methods_scored():
    a = {"p1": 0.80, "p2": 0.70, "p3": 0.90, "p4": math.nan, "only-a": 0.5}
    b = {"p1": 0.75, "p2": 0.72, "p3": 0.80, "p4": 0.60}
    d = comparison.paired_difference(a, b)
    diffs = [0.05, -0.02, 0.10]
    assert d.pairs == 3 and (d.ahead, d.behind) == (2, 1)
    assert d.mean == pytest.approx(sum(diffs) / 3)
    sd = math.sqrt(sum((x - d.mean) ** 2 for x in diffs) / 2)
    assert d.ci95 == pytest.approx(stats.t.ppf(0.975, 2) * sd / math.sqrt(3))
    assert d.wilcoxon_p == pytest.approx(stats.wilcoxon(diffs).pvalue)


def test_a_difference_of_too_few_pairs_has_no_interval():
    one = comparison.paired_difference({"p": 0.8}, {"p": 0.7})
    assert one.pairs == 1 and one.mean == pytest.approx(0.1) and math.isnan(one.ci95)
    same = comparison.paired_difference({"p": 0.8, "q": 0.6}, {"p": 0.8, "q": 0.6})
    assert same.mean == 0 and same.ci95 == 0 and math.isnan(same.wilcoxon_p)
    assert (same.ahead, same.behind) == (0, 0)
    none = comparison.paired_difference({"p": 0.8}, {"q": 0.7})
    assert none.pairs == 0 and math.isnan(none.mean)


def _row(method, pair, dice):
    labelled = {f"dice_{label}": value for label, value in dice.items()}
    values = [v for v in dice.values() if not math.isnan(v)]
    return {"method": method, "pair": pair, "dice_mean": sum(values) / len(values), **labelled}


def test_the_comparison_names_the_structures_the_first_method_loses_on_most_first():
    nan = math.nan
    rows = [
        _row("model", "a->b", {11: 0.60, 12: 0.90, 13: 0.80, 2: nan}),
        _row("model", "b->a", {11: 0.64, 12: 0.88, 13: 0.82, 2: nan}),
        _row("ants", "a->b", {11: 0.70, 12: 0.85, 13: 0.81, 2: nan}),
        _row("ants", "b->a", {11: 0.70, 12: 0.85, 13: 0.83, 2: nan}),
    ]
    for row in rows:  # a structure both methods align alike, to the table's precision
        row["dice_14"] = 0.9 + (0.0002 if row["method"] == "ants" else 0)
    names = {2: "Left-Cerebral-White-Matter", 11: "Left-Caudate", 12: "Left-Putamen"}
    text = comparison.markdown(rows, [2, 11, 12, 13, 14], names, "OASIS")
    assert text.startswith("# OASIS\n")
    assert "## model against each method, pair by pair" in text
    # Pair means: model 0.767 / 0.780, ants 0.787 / 0.793; differences -0.020 / -0.013,
    # their t interval over 2 pairs 12.71 × 0.0047 / √2.
    assert "| ants | 2 | -0.017 | ± 0.042 |" in text and "| 0 / 2 |" in text
    assert "| a->b | 0.767 | 0.787 |" in text
    assert "| Left-Caudate | 0.620 | 0.700 |" in text and "| 13 | 0.810 | 0.820 |" in text
    assert "White-Matter" not in text  # no pair holds it
    assert (
        "- model against ants: ahead on 1 of 4 structures; behind on Left-Caudate (-0.080), "
        "13 (-0.010)\n"
    ) in text


def test_one_method_gets_its_pairs_and_structures_without_a_paired_section():
    rows = [_row("model", "a->b", {1: 0.8, 2: 0.6})]
    text = comparison.markdown(rows, [1, 2], {1: "RV", 2: "myocardium"})
    assert "pair by pair" not in text and "against" not in text
    assert "| a->b | 0.700 |" in text and "| myocardium | 0.600 |" in text
