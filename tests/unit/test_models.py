"""The 42 baseline models: distinct, deterministic, and a real spread of opinions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from retro.pipeline.analysis import Analysis, analyze
from retro.pipeline.host_rows import PlayedMatch
from retro.pipeline.models import MODELS, PROVIDER, model_for, predict

KICKOFF = datetime(2025, 3, 1, 15, tzinfo=UTC)


def _sample() -> list[Analysis]:
    """Analyses over a small synthetic league: strong, average and weak sides."""
    teams = ["Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta"]
    strength = {t: i for i, t in enumerate(teams)}
    history = []
    day = KICKOFF - timedelta(days=200)
    for week in range(10):
        for i, home in enumerate(teams):
            away = teams[(i + week + 1) % len(teams)]
            if away == home:
                continue
            goals_home = max(0, 3 - strength[home] // 2 + week % 2)
            goals_away = max(0, 2 - strength[away] // 2)
            history.append(PlayedMatch(home, away, day, goals_home, goals_away))
            day += timedelta(hours=5)
    return [analyze(h, a, KICKOFF, history) for h in teams for a in teams if h != a] + [
        analyze("Newcomer", "Other", KICKOFF, [])
    ]


def test_42_models_with_distinct_ids_and_names() -> None:
    assert len(MODELS) == 42
    assert [m.id for m in MODELS] == [f"baseline-{n:02d}" for n in range(1, 43)]
    assert len({m.model_name for m in MODELS}) == 42
    assert len({m.display_name for m in MODELS}) == 42
    assert {m.provider for m in MODELS} == {PROVIDER}


def test_predictions_are_deterministic_and_valid() -> None:
    sample = _sample()
    first = [[predict(m, a) for m in MODELS] for a in sample]
    second = [[predict(m, a) for m in MODELS] for a in sample]
    assert first == second
    for row in first:
        for home, away in row:
            assert 0 <= home <= 10 and 0 <= away <= 10


def test_models_disagree() -> None:
    sample = _sample()
    by_model = {m.id: tuple(predict(m, a) for a in sample) for m in MODELS}
    assert len(set(by_model.values())) >= 35  # (nearly) every model has its own opinion
    tendencies = {
        "H" if h > a else "A" if h < a else "D" for row in by_model.values() for h, a in row
    }
    assert tendencies == {"H", "D", "A"}
    per_match = [{predict(m, a) for m in MODELS} for a in sample]
    assert all(len(lines) >= 3 for lines in per_match)


def test_no_history_still_predicts() -> None:
    analysis = analyze("Home FC", "Away FC", KICKOFF, [])
    assert analysis.favorite_team_name == "Home FC"
    assert all(isinstance(predict(m, analysis), tuple) for m in MODELS)


def test_foreign_model_ids_map_to_a_stable_baseline() -> None:
    assert model_for("baseline-07") is MODELS[6]
    assert model_for("openai/gpt-4o") == model_for("openai/gpt-4o")
    assert model_for("openai/gpt-4o") in MODELS
