"""docs/alerts.yml (issue 11, point 6): Prometheus accepts the rules (``promtool check
rules``), they fire when they should (``promtool test rules docs/alerts.test.yml``),
and every metric they read is one retro exports.

promtool comes from Debian's ``prometheus`` package (``.ci/run`` installs it). Without
it these tests are skipped, unless ``RETRO_REQUIRE_SERVICES=1`` (CI): then they fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from retro.metrics import LiveBackfills, Metrics, Notifications, RunsByState, WorkersByQueue
from tests.conftest import unavailable

DOCS = Path(__file__).resolve().parents[2] / "docs"
RULES = DOCS / "alerts.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        unavailable("promtool is not on PATH (apt-get install prometheus)", "alert rule")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=DOCS, capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_accepts_the_rules() -> None:
    checked = run("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout, checked.stdout


def test_the_rules_fire_as_their_unit_tests_say() -> None:
    tested = run("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_promtool_refuses_a_broken_rule(tmp_path: Path) -> None:
    """The check can fail: a rule with a broken expression is refused."""
    broken = tmp_path / "broken.yml"
    broken.write_text(RULES.read_text().replace("> 3 * 2", "> > 3"), encoding="utf-8")
    checked = run("check", "rules", str(broken))
    assert checked.returncode != 0


def exported_names() -> set[str]:
    """Every metric name retro's /metrics can show (counters with ``_total``)."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{part}" for part in ("bucket", "sum", "count")}
        else:
            names.add(family.name)
    names |= {RunsByState.NAME, WorkersByQueue.NAME, Notifications.PENDING}
    names |= {Notifications.ABANDONED, LiveBackfills.SECONDS, LiveBackfills.LIVE}
    return names


def test_every_rule_reads_metrics_retro_exports_and_explains_itself() -> None:
    text = RULES.read_text(encoding="utf-8")
    alerts = re.findall(r"^      - alert: (\w+)$", text, flags=re.M)
    assert alerts == [
        "RetroRunsFailing",
        "RetroJobWaitingOverBudget",
        "RetroNotTicking",
        "RetroDown",
        "RetroBackfillTooLong",
        "RetroNotificationsGivenUp",
    ]
    assert text.count("summary:") == text.count("description:") == len(alerts)
    used = set(re.findall(r"\bretro_[a-z_]+", text))
    assert {
        "retro_events_total",
        "retro_oldest_waiting_job_seconds",
        "retro_last_tick_timestamp_seconds",
        "retro_backfill_running_seconds",
        "retro_notifications_given_up_total",
    } <= used
    assert used <= exported_names(), sorted(used - exported_names())
