"""``retro config [--json]``: every setting, its value and its source, passwords masked;
a bad setting is one line and exit 2 (docs/config.md)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from retro.config import Settings
from tests.e2e.clirunner import Result, one_error_line, run_retro

pytestmark = pytest.mark.e2e

PASSWORD = "hunter2pw"
PG_URL = f"postgresql+psycopg://retro:{PASSWORD}@db.internal:5432/pipeline"
REDIS_URL = f"redis://:{PASSWORD}@redis.internal:6379/2"


def config_json(cwd: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_retro("config", "--json", *args, cwd=cwd, env=env)
    assert result.code == 0, result
    assert result.stderr == "", result
    assert PASSWORD not in result.output, result
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_defaults_in_an_empty_folder(tmp_path: Path) -> None:
    document = config_json(tmp_path)
    assert document["schema"] == "retro.config/1"
    assert set(document) == {"schema", "settings", "sources"}
    assert list(document["settings"]) == list(Settings.model_fields)
    assert set(document["sources"].values()) == {"default"}
    settings = document["settings"]
    assert settings["database_url"] == "sqlite+aiosqlite:///retro.db"
    assert settings["redis_url"] == "embedded"
    assert settings["max_in_flight"] == 1 and settings["cooldown"] == 86400.0
    assert settings["expected_predictions"] is None
    assert settings["analysis_job_id"] == "analyze-retro-{matchId}"
    assert (settings["http_port"], settings["http_host"]) == (0, "127.0.0.1")
    assert (settings["metrics_port"], settings["metrics_host"]) == (None, None)  # deprecated
    assert settings["log_format"] == "console"
    assert not (tmp_path / "retro.db").exists(), "config opened the database"


def test_environment_values_and_masked_passwords(tmp_path: Path) -> None:
    env = {
        "RETRO_DATABASE_URL": PG_URL,
        "RETRO_REDIS_URL": REDIS_URL,
        "RETRO_MAX_IN_FLIGHT": "7",
        "RETRO_SETTLEMENT_QUEUE": "scores",
        "RETRO_EXPECTED_PREDICTIONS": "12",
        "RETRO_PREDICTIONS_JOB_ID": "ops-predict-{matchId}",
    }
    document = config_json(tmp_path, env=env)
    settings, sources = document["settings"], document["sources"]
    assert settings["database_url"] == "postgresql+psycopg://retro:***@db.internal:5432/pipeline"
    assert settings["redis_url"] == "redis://:***@redis.internal:6379/2"
    assert (settings["max_in_flight"], settings["settlement_queue"]) == (7, "scores")
    assert settings["expected_predictions"] == 12
    assert settings["predictions_job_id"] == "ops-predict-{matchId}"
    changed = {"database_url", "redis_url", "max_in_flight", "settlement_queue"}
    changed |= {"expected_predictions", "predictions_job_id"}
    assert {name for name, source in sources.items() if source == "env"} == changed
    assert {sources[name] for name in set(sources) - changed} == {"default"}

    table = run_retro("config", cwd=tmp_path, env=env)
    assert table.code == 0, table
    assert PASSWORD not in table.output
    assert "retro:***@db.internal" in table.stdout and ":***@redis.internal" in table.stdout
    row = next(line for line in table.stdout.splitlines() if " max_in_flight " in line)
    assert "7" in row and "env" in row and "RETRO_MAX_IN_FLIGHT" in row


def test_precedence_option_env_dotenv_toml_default(tmp_path: Path) -> None:
    (tmp_path / "retro.toml").write_text(
        'queue_prefix = "fromtoml"\nmax_in_flight = 4\ncooldown = 600\n'
        f'redis_url = "{REDIS_URL}"\n',
        encoding="utf-8",
    )
    (tmp_path / ".env").write_text(
        f"RETRO_MAX_IN_FLIGHT=5\nRETRO_COOLDOWN=60\nRETRO_DATABASE_URL={PG_URL}\n",
        encoding="utf-8",
    )
    option_db = f"postgresql+psycopg://cli:{PASSWORD}@cli.internal/x"
    document = config_json(tmp_path, "--database-url", option_db, env={"RETRO_COOLDOWN": "30"})
    settings, sources = document["settings"], document["sources"]
    assert (settings["queue_prefix"], sources["queue_prefix"]) == ("fromtoml", "retro.toml")
    assert (settings["redis_url"], sources["redis_url"]) == (
        "redis://:***@redis.internal:6379/2",
        "retro.toml",
    )
    assert (settings["max_in_flight"], sources["max_in_flight"]) == (5, ".env")
    assert (settings["cooldown"], sources["cooldown"]) == (30.0, "env")
    assert (settings["database_url"], sources["database_url"]) == (
        "postgresql+psycopg://cli:***@cli.internal/x",
        "option",
    )
    assert sources["scan_days"] == "default"

    from_dotenv = config_json(tmp_path)  # no option: the .env URL, masked
    assert from_dotenv["settings"]["database_url"].startswith("postgresql+psycopg://retro:***@")
    assert from_dotenv["sources"]["database_url"] == ".env"


def test_http_and_log_settings_with_their_sources(tmp_path: Path) -> None:
    """``http_port``, ``http_host`` and ``log_format`` are settings: read from
    retro.toml, .env and the environment, shown by ``retro config`` with their source;
    the deprecated ``metrics_port``/``metrics_host`` set them, with their source."""
    (tmp_path / "retro.toml").write_text("metrics_port = 9464\n", encoding="utf-8")
    (tmp_path / ".env").write_text("RETRO_HTTP_HOST=0.0.0.0\n", encoding="utf-8")
    env = {"RETRO_LOG_FORMAT": "json"}
    document = config_json(tmp_path, env=env)
    settings, sources = document["settings"], document["sources"]
    assert (settings["metrics_port"], sources["metrics_port"]) == (9464, "retro.toml")
    assert (settings["http_port"], sources["http_port"]) == (9464, "retro.toml")
    assert (settings["http_host"], sources["http_host"]) == ("0.0.0.0", ".env")
    assert (settings["log_format"], sources["log_format"]) == ("json", "env")

    table = run_retro("config", cwd=tmp_path, env=env)
    assert table.code == 0, table
    cells = [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in table.stdout.splitlines()
        if line.startswith("│")
    ]
    rows = {row[0]: row[1:] for row in cells}
    assert rows["metrics_port"] == ["9464", "retro.toml", "RETRO_METRICS_PORT"], rows
    assert rows["http_host"] == ["0.0.0.0", ".env", "RETRO_HTTP_HOST"], rows
    assert rows["log_format"] == ["json", "env", "RETRO_LOG_FORMAT"], rows


def test_variables_that_are_not_settings_but_legitimate_are_accepted(tmp_path: Path) -> None:
    """The options' own variables (collected from the command tree), the crash-point
    variable and the test harness's are not refused (docs/config.md)."""
    env = {
        "RETRO_VERBOSE": "1",
        "RETRO_JSON": "1",
        "RETRO_CONFIG_JSON": "1",
        "RETRO_ETA_WINDOW": "600",
        "RETRO_CANCEL_REASON": "maintenance",
        "RETRO_HISTORY_OF": "run",
        "RETRO_WORKER_CONCURRENCY": "2",
        "RETRO_WORKER_LOCK_DURATION": "10",
        "RETRO_CRASH_AT": "",
        "RETRO_TEST_POSTGRES_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        "RETRO_TEST_REDIS_URL": "redis://127.0.0.1:6379/0",
        "RETRO_REQUIRE_SERVICES": "1",
    }
    document = config_json(tmp_path, env=env)
    assert set(document["sources"].values()) == {"default"}


# (id, extra env, files in the working directory, words the error line must name)
BAD_CASES: list[tuple[str, dict[str, str], dict[str, str], list[str]]] = [
    (
        "toml-typo",
        {},
        {"retro.toml": "max_inflight = 4\n"},
        ["unknown setting max_inflight in retro.toml", "did you mean max_in_flight?"],
    ),
    (
        "toml-table",
        {},
        {"retro.toml": "[retro]\nmax_in_flight = 4\n"},
        ["retro.toml has a table [retro]", "top level"],
    ),
    (
        "toml-dotted-key",
        {},
        {"retro.toml": "retro.max_in_flight = 4\n"},
        ["retro.toml has a table [retro]"],
    ),
    (
        "dotenv-typo",
        {},
        {".env": "RETRO_MAX_IN_FLIGHT=2\nRETRO_MAX_INFLIGHT=4\n"},
        ["unknown setting RETRO_MAX_INFLIGHT in .env", "did you mean RETRO_MAX_IN_FLIGHT?"],
    ),
    (
        "dotenv-no-prefix",
        {},
        {".env": "max_inflight=4\n"},
        ["unknown setting max_inflight in .env", "did you mean RETRO_MAX_IN_FLIGHT?"],
    ),
    (
        "dotenv-unparseable-line",
        {},
        {".env": "# settings\nRETRO_MAX_IN_FLIGHT 4\n"},
        [".env line 2 is not KEY=value", "RETRO_MAX_IN_FLIGHT 4"],
    ),
    (
        "dotenv-key-without-value",
        {},
        {".env": "RETRO_MAX_IN_FLIGHT\n"},
        [".env line 1: RETRO_MAX_IN_FLIGHT has no =value"],
    ),
    (
        "env-lower-case-option-variable",
        {"retro_eta_window": "abc"},
        {},
        ["environment variable retro_eta_window is read as RETRO_ETA_WINDOW only"],
    ),
    (
        "env-one-setting-twice-in-two-cases",
        {"RETRO_MAX_IN_FLIGHT": "7", "retro_max_in_flight": "4"},
        {},
        ["RETRO_MAX_IN_FLIGHT and retro_max_in_flight", "keep one"],
    ),
    (
        "env-empty-embedded-redis-path",
        {"RETRO_EMBEDDED_REDIS_PATH": ""},
        {},
        ["invalid setting embedded_redis_path", "is empty"],
    ),
    (
        "env-infinite-duration",
        {"RETRO_COOLDOWN": "inf"},
        {},
        ["invalid setting cooldown (RETRO_COOLDOWN)", "finite"],
    ),
    (
        "dotenv-option-variable",
        {},
        {".env": "RETRO_VERBOSE=1\n"},
        ["RETRO_VERBOSE in .env is not a setting"],
    ),
    (
        "env-typo",
        {"RETRO_MAX_INFLIGHT": "4"},
        {},
        [
            "unknown environment variable RETRO_MAX_INFLIGHT",
            "did you mean RETRO_MAX_IN_FLIGHT?",
        ],
    ),
    (
        "env-acting-flag",
        {"RETRO_WATCH": "1"},
        {},
        ["unknown environment variable RETRO_WATCH", "status --watch only from the command line"],
    ),
    ("env-unrelated", {"RETRO_FOO": "1"}, {}, ["unknown environment variable RETRO_FOO"]),
    ("toml-port", {}, {"retro.toml": "metrics_port = 70000\n"}, ["RETRO_METRICS_PORT", "65535"]),
    ("toml-log-format", {}, {"retro.toml": 'log_format = "xml"\n'}, ["RETRO_LOG_FORMAT", "json"]),
    (
        "dotenv-host",
        {},
        {".env": "RETRO_METRICS_HOST='not a host'\n"},
        ["RETRO_METRICS_HOST", "'not a host'", "host name"],
    ),
    ("not-int", {"RETRO_MAX_IN_FLIGHT": "abc"}, {}, ["RETRO_MAX_IN_FLIGHT", "integer"]),
    ("zero", {"RETRO_MAX_IN_FLIGHT": "0"}, {}, ["RETRO_MAX_IN_FLIGHT", "greater than or equal"]),
    (
        "job-id-colon",
        {"RETRO_ANALYSIS_JOB_ID": "a:{matchId}"},
        {},
        ["RETRO_ANALYSIS_JOB_ID", "':'"],
    ),
    (
        "job-id-field",
        {"RETRO_SETTLEMENT_JOB_ID": "s-{id}"},
        {},
        ["RETRO_SETTLEMENT_JOB_ID", "{id}"],
    ),
    ("toml-negative", {}, {"retro.toml": "cooldown = -1\n"}, ["RETRO_COOLDOWN"]),
    ("toml-broken", {}, {"retro.toml": "max_in_flight = \n"}, ["retro.toml", "TOML"]),
    ("dotenv-not-int", {}, {".env": "RETRO_SCAN_DAYS=soon\n"}, ["RETRO_SCAN_DAYS"]),
    (
        "bad-port",
        {"RETRO_DATABASE_URL": PG_URL.replace(":5432", ":notaport")},
        {},
        ["RETRO_DATABASE_URL", "notaport"],
    ),
    ("pg-embedded", {"RETRO_DATABASE_URL": PG_URL}, {}, ["embedded", "RETRO_REDIS_URL"]),
]


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    """Every bad case, two at a time, each in its own folder; every other one with --json."""
    jobs: dict[str, tuple[Path, list[str], dict[str, str]]] = {}
    for n, (case_id, env, files, _) in enumerate(BAD_CASES):
        cwd = tmp_path_factory.mktemp(case_id)
        for name, text in files.items():
            (cwd / name).write_text(text, encoding="utf-8")
        jobs[case_id] = (cwd, ["config", "--json"] if n % 2 else ["config"], env)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            key: pool.submit(run_retro, *args, cwd=cwd, env=env)
            for key, (cwd, args, env) in jobs.items()
        }
        return {key: future.result() for key, future in futures.items()}


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0]) for c in BAD_CASES])
def test_a_bad_setting_is_one_line_and_exit_2(
    bad: dict[str, Result], case: tuple[str, dict[str, str], dict[str, str], list[str]]
) -> None:
    line = one_error_line(bad[case[0]], *case[3])
    assert PASSWORD not in line
    if case[0] in ("toml-table", "env-unrelated", "dotenv-option-variable"):
        assert "did you mean" not in line, line
