"""The stage table (retro/stages.py) against DESIGN §1, and everything that reads it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from retro.config import Settings
from retro.events import Phase
from retro.machine import Policy
from retro.progress import HANDOFFS_LEFT
from retro.queue import job_id_formats, queue_names
from retro.stages import STAGES
from retro.store.facts import DONE_SQL, MatchFacts

# DESIGN §1's table, written out here independently of the code.
DESIGN = {
    Phase.ANALYSIS: ("analysis-queue", "analyze-match", "analyze-retro-{matchId}", 120.0),
    Phase.PREDICTIONS: ("predictions-queue", "predict-match", "predict-retro-{matchId}", 300.0),
    Phase.SETTLEMENT: ("settlement-queue", "settle-match", "settle-retro-{matchId}", 60.0),
}


def match(**fields: object) -> MatchFacts:
    values: dict[str, object] = {
        "match_id": "m1",
        "external_id": "ext-1",
        "home_team": "Home FC",
        "away_team": "Away FC",
        "status": "finished",
        "home_score": 2,
        "away_score": 1,
        "has_analysis": False,
        "found": 0,
        "expected": 42,
        "unscored": 0,
    }
    return MatchFacts(**{**values, **fields})  # type: ignore[arg-type]


def test_one_stage_per_phase_in_pipeline_order_as_design_names_them() -> None:
    assert list(STAGES) == [Phase.ANALYSIS, Phase.PREDICTIONS, Phase.SETTLEMENT]
    for phase, (queue, job_name, job_id, timeout) in DESIGN.items():
        stage = STAGES[phase]
        assert (stage.queue, stage.job_name, stage.job_id, stage.timeout) == (
            queue,
            job_name,
            job_id,
            timeout,
        )


def test_payloads_are_the_host_payloads() -> None:
    m = match()
    assert STAGES[Phase.ANALYSIS].payload(m) == {
        "matchId": "m1",
        "externalId": "ext-1",
        "homeTeam": "Home FC",
        "awayTeam": "Away FC",
        "allowRetroactive": True,
    }
    assert STAGES[Phase.PREDICTIONS].payload(m) == {
        "matchId": "m1",
        "attempt": 1,
        "skipIfDone": True,
        "allowRetroactive": True,
    }
    assert STAGES[Phase.SETTLEMENT].payload(m) == {
        "matchId": "m1",
        "homeScore": 2,
        "awayScore": 1,
        "status": "finished",
    }


def test_settings_and_policy_defaults_come_from_the_table() -> None:
    settings = Settings()
    assert queue_names(settings) == {p: d[0] for p, d in DESIGN.items()}
    assert job_id_formats(settings) == {p: d[2] for p, d in DESIGN.items()}
    assert {p: settings.phase_timeout(p) for p in Phase} == {p: d[3] for p, d in DESIGN.items()}
    assert {p: settings.queue_wait(p) for p in Phase} == dict.fromkeys(Phase, 600.0)
    policy = Policy()
    assert dict(policy.job_ids) == job_id_formats(settings)
    assert dict(policy.budgets) == {p: d[3] for p, d in DESIGN.items()}
    for stage in STAGES.values():
        for name in (stage.queue_setting, stage.job_id_setting, stage.timeout_setting):
            assert name in Settings.model_fields
        assert stage.queue_wait_setting in Settings.model_fields


def test_each_done_check_has_its_sql_and_its_fact() -> None:
    facts = {f.name for f in dataclasses.fields(MatchFacts)}
    assert set(DONE_SQL) == {stage.done for stage in STAGES.values()}
    assert set(DONE_SQL) <= facts


def test_handoffs_left_count_this_stage_and_every_later_one() -> None:
    assert HANDOFFS_LEFT == {"pending": 3, "analyzing": 3, "predicting": 2, "settling": 1}


def test_docs_interop_table_names_what_the_table_holds() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "interop.md").read_text()
    rows = re.findall(
        r"^\| (\w+) \| `([^`]+)` \(`(RETRO_\w+)`\) \| `([^`]+)` \| `([^`]+)` \|$", text, re.M
    )
    assert rows == [
        (
            str(stage.phase),
            stage.queue,
            f"RETRO_{stage.queue_setting.upper()}",
            stage.job_name,
            stage.job_id,
        )
        for stage in STAGES.values()
    ]
