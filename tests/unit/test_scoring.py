"""The Kicktipp quota rule (DESIGN §1): quotas, clamps, rounding, bonuses."""

from __future__ import annotations

import pytest

from retro.pipeline.scoring import Points, Quotas, points, quota, quotas, settle, tendency


def test_tendency() -> None:
    assert tendency(2, 1) == "H"
    assert tendency(1, 1) == "D"
    assert tendency(0, 3) == "A"


@pytest.mark.parametrize(
    ("count", "total", "expected"),
    [
        (42, 42, 2),  # everyone: 6/10 - 0.6 + 2 = 2.0
        (21, 42, 3),  # half: 1.2 - 0.6 + 2 = 2.6 -> 3
        (10, 42, 4),  # 2.52 - 0.6 + 2 = 3.92 -> 4
        (6, 30, 4),  # P = 0.2: 3.0 - 0.6 + 2 = 4.4 -> 4
        (3, 20, 5),  # P = 0.15: 4.0 - 0.6 + 2 = 5.4 -> 5
        (1, 10, 6),  # P = 0.1: 7.4, clamped to 6
        (1, 42, 6),  # a lone tip: clamped to 6
        (0, 42, 6),  # nobody predicted it
        (0, 0, 6),  # no predictions at all
    ],
)
def test_quota(count: int, total: int, expected: int) -> None:
    assert quota(count, total) == expected


def test_quota_rounds_half_up() -> None:
    # P = 6/11: 6·11/(10·6) - 0.6 + 2 = 1.1 + 1.4 = 2.5 exactly -> 3 (half up, not to even)
    assert quota(6, 11) == 3
    # P = 2/3: 0.9 + 1.4 = 2.3 -> 2; P = 3/4: 0.8 + 1.4 = 2.2 -> 2
    assert quota(2, 3) == 2
    assert quota(3, 4) == 2


def test_quota_never_leaves_two_to_six() -> None:
    for total in range(1, 60):
        for count in range(total + 1):
            assert 2 <= quota(count, total) <= 6


def test_quota_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        quota(5, 4)
    with pytest.raises(ValueError):
        quota(-1, 4)


def test_quotas_count_tendencies() -> None:
    assert quotas(["H"] * 30 + ["D"] * 12) == Quotas(home=2, draw=4, away=6)


def test_points_exact_score() -> None:
    q = Quotas(home=3, draw=4, away=6)
    assert points((2, 1), (2, 1), q) == Points(3, 1, 3, 7)
    assert points((0, 2), (0, 2), q) == Points(6, 1, 3, 10)  # the maximum


def test_points_goal_difference() -> None:
    q = Quotas(home=3, draw=4, away=6)
    assert points((3, 2), (2, 1), q) == Points(3, 1, 0, 4)
    assert points((1, 1), (2, 2), q) == Points(4, 1, 0, 5)  # a draw's difference is always 0


def test_points_tendency_only_and_wrong() -> None:
    q = Quotas(home=3, draw=4, away=6)
    assert points((3, 0), (2, 1), q) == Points(3, 0, 0, 3)
    assert points((1, 2), (2, 1), q) == Points(0, 0, 0, 0)
    assert points((1, 1), (2, 1), q) == Points(0, 0, 0, 0)


def test_settle_scores_every_tip_in_order() -> None:
    tips = [(2, 1)] * 8 + [(1, 1)] * 2  # H: 80 % -> 2, D: 20 % -> 4, A: nobody -> 6
    match_quotas, scored = settle(tips, (1, 1))
    assert match_quotas == Quotas(home=2, draw=4, away=6)
    assert scored[:8] == [Points(0, 0, 0, 0)] * 8
    assert scored[8:] == [Points(4, 1, 3, 8)] * 2


def test_unpredicted_outcome_is_worth_six() -> None:
    match_quotas, scored = settle([(2, 0), (1, 0), (1, 1)], (0, 1))
    assert match_quotas.away == 6
    assert all(p.total_points == 0 for p in scored)
