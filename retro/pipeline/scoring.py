"""Settlement scoring: the Kicktipp quota rule (DESIGN §1). Pure.

Count a match's predictions by tendency (H/D/A). For a tendency with share
``P`` of all predictions the quota is ``6/(10·P) - 0.6 + 2``, clamped to
``[2, 6]`` and rounded half up; an outcome nobody predicted is worth 6. A
prediction with the right tendency earns that quota, +1 if the goal difference
is right too, +3 more for the exact score (at most 10); a wrong tendency earns 0.

The quota is computed in exact integer arithmetic, so a value of exactly x.5
always rounds up (float rounding would make that depend on representation).
As DESIGN §1 states the rule, a right draw tendency always has the right goal
difference (0), so it always earns the +1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Tendency = Literal["H", "D", "A"]

MIN_QUOTA = 2
MAX_QUOTA = 6
GOAL_DIFF_BONUS = 1
EXACT_SCORE_BONUS = 3


@dataclass(frozen=True)
class Quotas:
    """Points for a right home win / draw / away win tendency (Kicktipp quota rule)."""

    home: int
    draw: int
    away: int

    def of(self, tendency: Tendency) -> int:
        """The quota for ``tendency``."""
        return {"H": self.home, "D": self.draw, "A": self.away}[tendency]


@dataclass(frozen=True)
class Points:
    """The four point columns of a scored prediction."""

    tendency_points: int
    goal_diff_bonus: int
    exact_score_bonus: int
    total_points: int


def tendency(home_goals: int, away_goals: int) -> Tendency:
    """``H``, ``D`` or ``A`` for a score line."""
    if home_goals > away_goals:
        return "H"
    if home_goals < away_goals:
        return "A"
    return "D"


def quota(count: int, total: int) -> int:
    """The Kicktipp quota rule for one tendency: ``6/(10·P) - 0.6 + 2``, clamped, rounded.

    Args:
        count: predictions with this tendency.
        total: all predictions of the match.

    Returns:
        An integer in [2, 6]; 6 when nobody predicted the tendency. Rounding is
        half up: with ``P = count/total`` the value is ``(3·total + 7·count) /
        (5·count)``, so ``round_half_up = (6·total + 19·count) // (10·count)``.

    Raises:
        ValueError: ``count`` is negative or larger than ``total``.
    """
    if count < 0 or count > total:
        raise ValueError(f"count {count} outside [0, total={total}]")
    if count == 0:
        return MAX_QUOTA
    rounded = (6 * total + 19 * count) // (10 * count)
    return max(MIN_QUOTA, min(MAX_QUOTA, rounded))


def quotas(tendencies: Iterable[Tendency]) -> Quotas:
    """The Kicktipp quota rule applied to all of a match's predicted tendencies."""
    counts = {"H": 0, "D": 0, "A": 0}
    for item in tendencies:
        counts[item] += 1
    total = sum(counts.values())
    return Quotas(quota(counts["H"], total), quota(counts["D"], total), quota(counts["A"], total))


def points(predicted: tuple[int, int], actual: tuple[int, int], match_quotas: Quotas) -> Points:
    """Score one prediction with the Kicktipp quota rule.

    Args:
        predicted: predicted (home, away) goals.
        actual: final (home, away) goals.
        match_quotas: the match's quotas from :func:`quotas`.

    Returns:
        Quota for the right tendency, +1 for the right goal difference, +3 more
        for the exact score (max 10); all zero for a wrong tendency.
    """
    right = tendency(*predicted)
    if right != tendency(*actual):
        return Points(0, 0, 0, 0)
    base = match_quotas.of(right)
    diff = GOAL_DIFF_BONUS if predicted[0] - predicted[1] == actual[0] - actual[1] else 0
    exact = EXACT_SCORE_BONUS if predicted == actual else 0
    return Points(base, diff, exact, base + diff + exact)


def settle(tips: Sequence[tuple[int, int]], actual: tuple[int, int]) -> tuple[Quotas, list[Points]]:
    """Score every tip of a match with the Kicktipp quota rule.

    Args:
        tips: every (non-void) prediction of the match, as (home, away) goals.
        actual: the final (home, away) goals.

    Returns:
        The match's quotas and each tip's points, in the order of ``tips``.
    """
    match_quotas = quotas(tendency(h, a) for h, a in tips)
    return match_quotas, [points(tip, actual, match_quotas) for tip in tips]
