"""Job-id formats are settings: validated once, then used for every job id retro makes."""

from __future__ import annotations

import pytest

from retro.app import App, policy_from
from retro.config import ConfigError, load_settings
from retro.events import Phase
from retro.queue import JOB_ID_FORMATS, job_id_formats
from retro.scheduler import Daemon


def test_the_defaults_are_the_original_scripts_ids() -> None:
    settings = load_settings()
    assert job_id_formats(settings) == JOB_ID_FORMATS
    assert policy_from(settings).job_id(Phase.ANALYSIS, "m-1") == "analyze-retro-m-1"
    assert policy_from(settings).job_id(Phase.PREDICTIONS, "m-1") == "predict-retro-m-1"
    assert policy_from(settings).job_id(Phase.SETTLEMENT, "m-1") == "settle-retro-m-1"


def test_a_custom_format_reaches_the_policy() -> None:
    settings = load_settings(
        analysis_job_id="a-{matchId}",
        predictions_job_id="{matchId}.p",
        settlement_job_id="ops_s-{matchId}-x",
    )
    policy = policy_from(settings)
    assert [policy.job_id(phase, "42") for phase in Phase] == ["a-42", "42.p", "ops_s-42-x"]


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("retro-m", "exactly once, not 0"),
        ("a-{matchId}-{matchId}", "exactly once, not 2"),
        ("a-{matchId}-{stage}", "placeholder {stage}"),
        ("a-{}-{matchId}", "placeholder {}"),
        ("a-{0}", "placeholder {0}"),
        ("a-{matchId!r}", "no conversion or format spec"),
        ("a-{matchId:>8}", "no conversion or format spec"),
        ("retro:{matchId}", "':'"),
        ("a-{{x}}-{matchId}", "brace outside"),
        ("a-{matchId", "not a template"),
        ("{matchId}", "needs a letter"),
        (" {matchId} ", "needs a letter"),
        ("1{matchId}", "needs a letter"),
        ("{matchId}0", "needs a letter"),
        ("-{matchId}", "needs a letter"),
    ],
)
def test_a_bad_format_is_one_line_naming_the_setting(template: str, why: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(predictions_job_id=template)
    message = str(raised.value)
    assert message.startswith("invalid setting predictions_job_id (RETRO_PREDICTIONS_JOB_ID)")
    assert repr(template) in message and why in message and "\n" not in message


@pytest.mark.parametrize(
    ("job_id", "wakes"),
    [
        ("custom-m-1-a", True),
        ("m-1.p", True),
        ("custom-m-1-a-b-a", True),  # match ids may hold dashes
        ("analyze-retro-m-1", False),  # the default format is not configured here
        ("custom--a", False),  # no match id
        ("host-job-17", False),
    ],
)
async def test_the_daemon_wakes_for_its_own_configured_job_ids(job_id: str, wakes: bool) -> None:
    settings = load_settings(
        database_url="sqlite+aiosqlite:///never-opened.db",
        analysis_job_id="custom-{matchId}-a",
        predictions_job_id="{matchId}.p",
    )
    daemon = Daemon(App(settings, redis=False))
    daemon._on_job_finished(job_id)
    assert daemon._wake.is_set() is wakes
