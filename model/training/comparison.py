"""Methods compared pair by pair and structure by structure.

Methods scored on the same pairs (``riir evaluate``, ``riir experiment``) differ from pair to
pair far less than the spread of their means suggests, so a claim such as "ahead of ANTs
SyNCC" rests on the paired difference: its mean, its 95 % interval (t), the Wilcoxon
signed-rank p-value and on how many pairs one method is ahead. On anatomy with many
structures (whole brains) one mean Dice can hide where a method loses, so the mean Dice of
each structure is compared as well.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.networks.metrics import nanmean


@dataclass(frozen=True)
class PairedDifference:
    """a − b over the pairs both scored (a NaN score on either side leaves the pair out)."""

    pairs: int
    mean: float  # NaN without pairs
    ci95: float  # half-width of the t interval of the mean; NaN under 2 pairs
    wilcoxon_p: float  # NaN under 2 pairs or when every difference is 0
    ahead: int  # pairs where a > b
    behind: int  # pairs where a < b


def paired_difference(a: Mapping[str, float], b: Mapping[str, float]) -> PairedDifference:
    from scipy import stats

    d = np.array([a[k] - b[k] for k in a if k in b and not math.isnan(a[k] - b[k])])
    mean = float(d.mean()) if d.size else math.nan
    ci95 = p = math.nan
    if d.size >= 2:
        ci95 = float(stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
        if d.any():
            with warnings.catch_warnings():  # few pairs or tied ones: an approximate p
                warnings.simplefilter("ignore")
                p = float(stats.wilcoxon(d).pvalue)
    return PairedDifference(int(d.size), mean, ci95, p, int((d > 0).sum()), int((d < 0).sum()))


def _methods(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The methods in the order the rows first name them (the first is the one compared)."""
    return list(dict.fromkeys(r["method"] for r in rows))


def _by_pair(rows: Sequence[Mapping[str, Any]], method: str, key: str) -> dict[str, float]:
    return {r["pair"]: float(r.get(key, math.nan)) for r in rows if r["method"] == method}


def _cell(value: float, signed: bool = False) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _table(head: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(cells) + " |" for cells in lines),
    ]


def paired_section(rows: Sequence[Mapping[str, Any]], key: str = "dice_mean") -> list[str]:
    """The first method against each other one, pair by pair."""
    methods = _methods(rows)
    first = _by_pair(rows, methods[0], key)
    lines = []
    for other in methods[1:]:
        d = paired_difference(first, _by_pair(rows, other, key))
        p = "–" if math.isnan(d.wilcoxon_p) else f"{d.wilcoxon_p:.2g}"
        interval = "–" if math.isnan(d.ci95) else f"± {d.ci95:.3f}"
        lines.append(
            [
                other,
                str(d.pairs),
                _cell(d.mean, signed=True),
                interval,
                p,
                f"{d.ahead} / {d.behind}",
            ]
        )
    head = [
        "method",
        "pairs",
        f"Dice of {methods[0]} − method",
        "95 % interval",
        "Wilcoxon p",
        f"{methods[0]} ahead / behind (pairs)",
    ]
    return [f"## {methods[0]} against each method, pair by pair", "", *_table(head, lines)]


def pairs_section(rows: Sequence[Mapping[str, Any]], key: str = "dice_mean") -> list[str]:
    """Each pair's Dice under each method."""
    methods = _methods(rows)
    scores = {m: _by_pair(rows, m, key) for m in methods}
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    lines = [[p, *(_cell(scores[m].get(p, math.nan)) for m in methods)] for p in pairs]
    return ["## Dice per pair", "", *_table(["pair", *methods], lines)]


def structures_section(
    rows: Sequence[Mapping[str, Any]],
    labels: Sequence[int],
    label_names: Mapping[int, str] | None = None,
) -> list[str]:
    """Mean Dice of each structure under each method; with more than one method, where the
    first one is ahead and where it is behind, most behind first."""
    methods = _methods(rows)
    names = {label: (label_names or {}).get(label, str(label)) for label in labels}
    means = {
        m: {
            label: nanmean(
                [float(r.get(f"dice_{label}", math.nan)) for r in rows if r["method"] == m]
            )
            for label in labels
        }
        for m in methods
    }
    # A structure no pair holds (the cortex of a collection labelled without it) is left out.
    labels = [label for label in labels if any(not math.isnan(means[m][label]) for m in methods)]
    lines = [[names[label], *(_cell(means[m][label]) for m in methods)] for label in labels]
    out = ["## Dice per structure (mean over the pairs)", ""]
    out += _table(["structure", *methods], lines)
    if len(methods) > 1:
        out.append("")
    for other in methods[1:]:
        # To the table's precision: a gap that prints as 0.000 is a tie, neither side's.
        gap = {
            label: round(means[methods[0]][label] - means[other][label], 3)
            for label in labels
            if not math.isnan(means[methods[0]][label] - means[other][label])
        }
        behind = sorted((g, label) for label, g in gap.items() if g < 0)
        ahead = sum(g > 0 for g in gap.values())
        where = ", ".join(f"{names[label]} ({g:+.3f})" for g, label in behind)
        out.append(
            f"- {methods[0]} against {other}: ahead on {ahead} of {len(gap)} structures"
            + (f"; behind on {where}" if where else "")
        )
    return out


def markdown(
    rows: Sequence[Mapping[str, Any]],
    labels: Sequence[int],
    label_names: Mapping[int, str] | None = None,
    title: str = "",
) -> str:
    """``comparison.md`` of ``riir evaluate``: the paired comparison (with more than one
    method), each pair's Dice, and each structure's (with more than one structure)."""
    methods = _methods(rows)
    parts: list[str] = [f"# {title or 'Comparison'}", ""]
    if len(methods) > 1:
        parts += [*paired_section(rows), ""]
    parts += pairs_section(rows)
    if len(labels) > 1:
        parts += ["", *structures_section(rows, labels, label_names)]
    return "\n".join(parts) + "\n"
