"""Pre-match analysis: only the past counts, and there is always a favourite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from retro.pipeline.analysis import analyze, percentages, team_record
from retro.pipeline.host_rows import AnalysisRow, PlayedMatch
from retro.pipeline.stages import analysis_from_row, analysis_row

T0 = datetime(2025, 1, 1, 15, tzinfo=UTC)


def _m(days: int, home: str, away: str, hg: int, ag: int) -> PlayedMatch:
    return PlayedMatch(home, away, T0 + timedelta(days=days), hg, ag)


HISTORY = [
    _m(0, "Reds", "Blues", 3, 0),
    _m(7, "Greens", "Reds", 1, 1),
    _m(14, "Reds", "Greens", 0, 2),
    _m(21, "Blues", "Reds", 1, 4),
    _m(28, "Reds", "Blues", 2, 2),  # the analysed match's own kick-off: excluded
]


def test_form_is_last_results_oldest_first_and_strictly_before() -> None:
    record = team_record("Reds", T0 + timedelta(days=28), HISTORY)
    assert record.played == 4
    assert record.form == "WDLW"


def test_form_keeps_the_last_five() -> None:
    many = [_m(d, "Reds", "X", 1, 0) for d in range(6)] + [_m(6, "X", "Reds", 2, 0)]
    assert team_record("Reds", T0 + timedelta(days=30), many).form == "WWWWL"


def test_analysis_is_deterministic_and_sums_to_100() -> None:
    kickoff = T0 + timedelta(days=28)
    first = analyze("Reds", "Blues", kickoff, HISTORY)
    assert first == analyze("Reds", "Blues", kickoff, list(reversed(HISTORY)))
    assert first.home_win_pct + first.draw_pct + first.away_win_pct == 100
    assert first.favorite_team_name == "Reds"
    assert first.away_form == "LL"


def test_no_history_favours_the_home_side() -> None:
    analysis = analyze("Newcomers", "Visitors", T0, [])
    assert analysis.favorite_team_name == "Newcomers"
    assert analysis.home_form == analysis.away_form == ""
    assert analysis.home_win_pct > analysis.away_win_pct


def test_percentages_largest_remainder() -> None:
    assert percentages((1 / 3, 1 / 3, 1 / 3)) == (34, 33, 33)
    assert sum(percentages((0.455, 0.27, 0.275))) == 100


def test_analysis_survives_the_database_row() -> None:
    analysis = analyze("Reds", "Blues", T0 + timedelta(days=28), HISTORY)
    row = analysis_row("m-1", analysis)
    assert row.id == "analysis-m-1"
    assert row.home_goals_avg == f"{analysis.home_scored_avg:.2f}/{analysis.home_conceded_avg:.2f}"
    assert analysis_from_row(row, "Reds", "Blues") == analysis


def test_a_hosts_sparse_analysis_row_still_reads() -> None:
    sparse = analysis_from_row(AnalysisRow("m-1", "Blues"), "Reds", "Blues")
    assert sparse.favorite_team_name == "Blues"
    assert sparse.away_win_pct > sparse.home_win_pct
    assert sparse.home_scored_avg == sparse.away_conceded_avg == 1.4
