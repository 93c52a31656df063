"""Metrics bookkeeping (hand-offs, latency, failures), the failure-reason label, the
/healthz tick rule and both log formats (fields, masking), without servers."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from retro.events import (
    AnalysisCompleted,
    AnalysisRequested,
    JobFailed,
    PhaseTimedOut,
    PredictionsRequested,
    PredictionsShort,
    RunCompleted,
    SettlementRequested,
)
from retro.logs import setup_logging
from retro.machine import JobView, Run, State, Step
from retro.metrics import REASON_LENGTH, Health, Metrics, failure_reason

T0 = datetime(2025, 5, 20, 19, tzinfo=UTC)
PASSWORD = "Pa55w0rd"


def at(seconds: float) -> float:
    return (T0 + timedelta(seconds=seconds)).timestamp()


def run_in(state: State, job_id: str | None) -> Run:
    return Run(
        id="r1",
        match_id="m1",
        state=state,
        step=Step.JOB,
        attempt=1,
        job_id=job_id,
        requested_at=T0,
        adopted_created_at=None,
        judged_created_at=None,
        not_before=None,
        next_check_at=T0,
        gaps=("missing_analysis",),
        found=0,
        expected=42,
        last_error=None,
        created_at=T0,
        updated_at=T0,
        finished_at=None,
        version=2,
    )


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def requested(cls: type[AnalysisRequested | PredictionsRequested | SettlementRequested], job: str):
    return cls(at=T0, job_id=job, attempt=1)


def test_latency_from_finished_on_seen_on_the_job() -> None:
    m = Metrics()
    m.appended("r1", requested(AnalysisRequested, "analyze-retro-m1"), now=at(0))
    finished = JobView(state="completed", finished_at=T0 + timedelta(seconds=2))
    m.job_seen(run_in(State.ANALYZING, "analyze-retro-m1"), finished)
    m.appended("r1", AnalysisCompleted(at=T0))
    m.appended("r1", requested(PredictionsRequested, "predict-retro-m1"), now=at(2.004))
    assert sample(m, "retro_handoffs_total", stage="analysis") == 1
    assert sample(m, "retro_handoffs_total", stage="predictions") == 1
    assert sample(m, "retro_handoff_latency_seconds_count", stage="predictions") == 1
    latency = sample(m, "retro_handoff_latency_seconds_sum", stage="predictions")
    assert latency == pytest.approx(0.004, abs=1e-5)
    assert sample(m, "retro_handoff_latency_seconds_bucket", stage="predictions", le="0.005") == 1
    assert sample(m, "retro_events_total", event="AnalysisCompleted") == 1


def test_latency_when_the_data_was_seen_before_the_completion_event() -> None:
    m = Metrics()
    m.appended("r1", requested(PredictionsRequested, "predict-retro-m1"), now=at(0))
    m.job_seen(run_in(State.PREDICTING, "predict-retro-m1"), JobView(state="active"))
    m.appended("r1", requested(SettlementRequested, "settle-retro-m1"), now=at(3.0))
    assert sample(m, "retro_handoff_latency_seconds_count", stage="settlement") == 0
    m.job_completed("predict-retro-m1", at(2.99))  # the completion event comes later
    assert sample(m, "retro_handoff_latency_seconds_count", stage="settlement") == 1
    latency = sample(m, "retro_handoff_latency_seconds_sum", stage="settlement")
    assert latency == pytest.approx(0.01, abs=1e-5)


def test_no_latency_for_a_retry_a_skipped_stage_or_a_stale_finish() -> None:
    m = Metrics()
    m.job_completed("analyze-retro-m1", at(-60))  # a leftover from an earlier run
    m.appended("r1", requested(AnalysisRequested, "analyze-retro-m1"), now=at(0))
    m.appended("r1", requested(AnalysisRequested, "analyze-retro-m1"), now=at(10))  # retry
    m.appended("r2", requested(PredictionsRequested, "predict-retro-m2"), now=at(0))  # skipped
    assert sample(m, "retro_handoff_latency_seconds_count", stage="analysis") == 0
    assert sample(m, "retro_handoff_latency_seconds_count", stage="predictions") == 0
    m.appended("r1", requested(PredictionsRequested, "predict-retro-m1"), now=at(20))
    assert sample(m, "retro_handoff_latency_seconds_count", stage="predictions") == 0  # stale
    m.appended("r1", RunCompleted(at=T0))
    assert sample(m, "retro_handoffs_total", stage="analysis") == 2


def test_failures_by_stage_and_bounded_reason() -> None:
    m = Metrics()
    m.appended("r1", JobFailed(at=T0, phase="analysis", reason="injected failure"))
    m.appended("r1", PhaseTimedOut(at=T0, phase="settlement", budget=60))
    m.appended("r1", PredictionsShort(at=T0, found=40, expected=42))
    m.appended("r1", JobFailed(at=T0, phase="analysis", reason="API quota hit for match 12345"))
    m.appended("r2", JobFailed(at=T0, phase="analysis", reason="API quota hit for match 67890"))
    assert sample(m, "retro_job_failures_total", stage="analysis", reason="injected failure") == 1
    assert sample(m, "retro_job_failures_total", stage="settlement", reason="timeout") == 1
    assert (
        sample(m, "retro_job_failures_total", stage="predictions", reason="predictions short") == 1
    )
    assert (
        sample(m, "retro_job_failures_total", stage="analysis", reason="api quota hit for match N")
        == 2
    )


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("Job analyze-retro-m-it1-12 completed but no analysis", "completed without data"),
        ("worker timed out after 30s", "timeout"),
        ("", "no reason given"),
        ("boom in 4f3a2b1c9d8e7f60 at step 3", "boom in id at step N"),
        (f"cannot reach postgresql://u:{PASSWORD}@db/x", "cannot reach postgresql://u:***@db/x"),
    ],
)
def test_failure_reason_label(reason: str, label: str) -> None:
    assert failure_reason(reason) == label


def test_failure_reason_is_cut() -> None:
    assert len(failure_reason("x" * 500)) == REASON_LENGTH


def test_scan_and_tick_metrics() -> None:
    from retro.store.gaps import Gap, GapKind, Scan

    m = Metrics()
    gap = Gap("m1", "A", "B", T0, "finished", (GapKind.MISSING_ANALYSIS, GapKind.UNSCORED), 0, 42)
    m.scanned(Scan(since=T0, until=T0, expected=42, gaps=[gap]), 0.25)
    assert sample(m, "retro_gap_scan_duration_seconds_sum") == 0.25
    assert sample(m, "retro_gaps_found", kind="unscored") == 1
    assert sample(m, "retro_gaps_found", kind="missing_predictions") == 0
    m.ticked(at(5))
    assert sample(m, "retro_ticks_total") == 1
    assert sample(m, "retro_last_tick_timestamp_seconds") == at(5)


def test_two_metrics_do_not_share_a_registry() -> None:
    first, second = Metrics(), Metrics()
    first.ticked()
    assert sample(first, "retro_ticks_total") == 1
    assert sample(second, "retro_ticks_total") == 0


@pytest.mark.parametrize(
    ("tick_interval", "age", "healthy"),
    [(2, 29.9, True), (2, 30.5, False), (20, 59, True), (20, 61, False)],
)
def test_healthz_tick_rule(tick_interval: float, age: float, healthy: bool) -> None:
    m = Metrics()
    health = Health(
        engine=None,  # type: ignore[arg-type]  # only the tick check runs here
        redis_url="redis://127.0.0.1:1/0",
        metrics=m,
        tick_interval=tick_interval,
        clock=lambda: at(age),
    )
    assert health._tick()["ok"] is False  # no tick yet
    m.ticked(at(0) - 7200, monotonic=at(0))  # the wall clock is not what is judged
    result = health._tick()
    assert result["ok"] is healthy, result
    assert result["limit_seconds"] == max(3 * tick_interval, 30)
    health.close()


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """What the log wrote to stderr; the root logger is restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield lambda: capsys.readouterr().err
    root.handlers[:] = handlers
    root.setLevel(level)


def emit() -> None:
    log = logging.getLogger("retro")
    fields = {"run": "r1", "match": "m1", "job": "analyze-retro-m1", "event": "JobFailed"}
    log.warning("JobFailed reason=cannot reach %s", f"redis://:{PASSWORD}@h:6379/0", extra=fields)
    log.info("plain line", extra={"reason": f"postgresql://u:{PASSWORD}@db/x failed"})
    try:
        raise RuntimeError(f"postgresql://u:{PASSWORD}@db/x")
    except RuntimeError:
        log.exception("boom", extra={"run": "r1"})


def test_json_lines(stderr: Callable[[], str]) -> None:
    setup_logging(False, "json")
    emit()
    text = stderr()
    assert PASSWORD not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) == 3
    first = records[0]
    assert list(first)[:4] == ["ts", "level", "logger", "msg"]
    assert datetime.fromisoformat(first["ts"]).utcoffset() == timedelta(0)
    assert first["level"] == "WARNING" and first["logger"] == "retro"
    assert (first["run"], first["match"], first["job"], first["event"]) == (
        "r1",
        "m1",
        "analyze-retro-m1",
        "JobFailed",
    )
    assert "redis://:***@h:6379/0" in first["msg"]
    assert records[1]["reason"] == "postgresql://u:***@db/x failed"
    assert "RuntimeError" in records[2]["exc_info"]


def test_console_lines(stderr: Callable[[], str]) -> None:
    setup_logging(False, "console")
    emit()
    text = stderr()
    assert PASSWORD not in text
    lines = text.splitlines()
    assert " WARNING retro JobFailed reason=cannot reach redis://:***@h:6379/0 " in lines[0]
    assert lines[0].endswith(" run=r1 match=m1 job=analyze-retro-m1 event=JobFailed")
    assert lines[1].endswith(' reason="postgresql://u:***@db/x failed"')
    assert lines[2].endswith(" ERROR retro boom run=r1")  # fields before the traceback
    assert "RuntimeError: postgresql://u:***@db/x" in text


def test_unknown_log_format() -> None:
    with pytest.raises(ValueError, match="xml"):
        setup_logging(False, "xml")


def test_healthz_names_an_unreachable_database_and_redis() -> None:
    import time

    from retro.metrics import sync_engine

    m = Metrics()
    m.ticked()
    engine = sync_engine(f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:1/x")
    health = Health(engine, f"redis://:{PASSWORD}@127.0.0.1:1/0", m, tick_interval=2)
    started = time.monotonic()
    healthy, body = health.check()
    assert time.monotonic() - started < 5
    health.close()
    engine.dispose()
    assert not healthy
    assert body["failed"] == ["database", "redis"], body
    assert body["checks"]["tick"]["ok"] is True
    assert PASSWORD not in json.dumps(body)


def test_a_fresh_daemon_exports_every_event_series_at_zero() -> None:
    """Prometheus' increase() cannot see a series' first value: a RunFailed series
    that appeared at 1 would hide the first failure after a start from the
    RetroRunsFailing alert (docs/alerts.yml). Every event type starts at 0."""
    m = Metrics()
    for event_type in ("RunSeeded", "RunFailed", "RunCompleted", "JobFailed"):
        exported = m.registry.get_sample_value("retro_events_total", {"event": event_type})
        assert exported == 0.0, event_type  # None: no series
