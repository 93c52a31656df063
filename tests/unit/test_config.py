"""Settings validation and the outage rule: bad values are one clear, masked message."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import get_args

import click
import pytest
from sqlalchemy.exc import OperationalError

from retro import crashpoints
from retro.cli import COMMAND_LINE_ONLY, cli, option_envvars
from retro.config import (
    HARNESS_ENV,
    ConfigError,
    LogFormat,
    Settings,
    check_keys,
    load_settings,
    mask,
    mask_url,
)
from retro.logs import LOG_FORMATS
from retro.store.db import is_unreachable
from tests import conftest

SECRET = "pa55word"


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("redis_url", f"redis://:{SECRET}@127.0.0.1:notaport/0", "'notaport'"),
        ("redis_url", f"redis://:{SECRET}@127.0.0.1:99999/0", "'99999'"),
        ("redis_url", "redis://127.0.0.1:6379/notadb", "'notadb'"),
        ("redis_url", "http://127.0.0.1:6379/0", "'http'"),
        ("database_url", f"postgresql+psycopg://u:{SECRET}@h:notaport/x", "'notaport'"),
        ("database_url", "postgresql://u@h/x", "'postgresql'"),
    ],
)
def test_bad_url_is_one_masked_line(setting: str, value: str, named: str) -> None:
    extra = {"redis_url": "redis://127.0.0.1:6379/0"} if setting == "database_url" else {}
    with pytest.raises(ConfigError) as raised:
        load_settings(**{setting: value, **extra})
    message = str(raised.value)
    assert named in message and f"RETRO_{setting.upper()}" in message
    assert SECRET not in message and "\n" not in message


def test_postgres_with_embedded_redis_is_refused() -> None:
    with pytest.raises(ConfigError, match="embedded"):
        load_settings(database_url="postgresql+psycopg://u@h/x")


def test_mask_url_hides_only_the_password() -> None:
    assert mask_url(f"redis://user:{SECRET}@h:1/0") == "redis://user:***@h:1/0"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"redis://:{SECRET}@more@h:1 unreachable", "redis://:***@h:1 unreachable"),
        (f"redis://h:1/0?password={SECRET}", "redis://h:1/0?password=***"),
        (
            f"postgresql+psycopg://u:{SECRET}@h/db?sslmode=require&PASSWORD={SECRET}&a=b",
            "postgresql+psycopg://u:***@h/db?sslmode=require&PASSWORD=***&a=b",
        ),
        (f"postgresql://u:{SECRET}@h/db, then mail a@b", "postgresql://u:***@h/db, then mail a@b"),
    ],
    ids=["at-in-password", "query-password", "both", "later-at"],
)
def test_mask_hides_passwords_with_an_at_sign_or_in_the_query(text: str, masked: str) -> None:
    assert mask(text) == masked
    assert SECRET not in mask_url(text.split(",")[0].split(" ")[0])


def test_a_schema_mistake_is_not_an_outage() -> None:
    missing = OperationalError("SELECT 1", {}, sqlite3.OperationalError("no such table: x"))
    locked = OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked"))
    assert not is_unreachable(missing)
    assert is_unreachable(locked)


# --- settings are checked, never guessed: unknown keys (docs/config.md) ----------------


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory and an environment without the caller's ``RETRO_*``
    (the test harness's own variables stay: they must be accepted)."""
    monkeypatch.chdir(tmp_path)
    for name in os.environ:
        if name.upper().startswith("RETRO_") and name not in HARNESS_ENV:
            monkeypatch.delenv(name)
    return tmp_path


def refused(**options: object) -> str:
    with pytest.raises(ConfigError) as raised:
        load_settings(**options)  # type: ignore[arg-type]
    message = str(raised.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("source", "text", "expected"),
    [
        (
            "retro.toml",
            "max_inflight = 4\n",
            "unknown setting max_inflight in retro.toml; did you mean max_in_flight?",
        ),
        (
            "retro.toml",
            "max-in-flight = 4\n",
            "unknown setting max-in-flight in retro.toml; did you mean max_in_flight?",
        ),
        ("retro.toml", "frobnicate = 1\n", "unknown setting frobnicate in retro.toml"),
        (
            "retro.toml",
            "[retro]\nmax_in_flight = 4\n",
            "retro.toml has a table [retro]: retro reads settings at the top level only, "
            "without a table",
        ),
        (
            "retro.toml",
            "[[runs]]\nx = 1\n",
            "retro.toml has a table [runs]: retro reads settings at the top level only, "
            "without a table",
        ),
        (
            ".env",
            "RETRO_TICK_INTERVALL=1\n",
            "unknown setting RETRO_TICK_INTERVALL in .env; did you mean RETRO_TICK_INTERVAL?",
        ),
        (
            ".env",
            "max_in_flight=4\n",
            "unknown setting max_in_flight in .env; did you mean RETRO_MAX_IN_FLIGHT?",
        ),
        (".env", "OTHER_APP_TOKEN=x\n", "unknown setting OTHER_APP_TOKEN in .env"),
    ],
)
def test_an_unknown_key_in_a_file_is_named_with_its_source(
    folder: Path, source: str, text: str, expected: str
) -> None:
    (folder / source).write_text(text, encoding="utf-8")
    assert refused() == expected


def test_an_unknown_environment_variable_is_named_with_the_closest_setting(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRO_MAX_INFLIGHT", "4")
    assert refused() == (
        "unknown environment variable RETRO_MAX_INFLIGHT; did you mean RETRO_MAX_IN_FLIGHT?"
    )
    monkeypatch.delenv("RETRO_MAX_INFLIGHT")
    monkeypatch.setenv("retro_cooldwn", "4")  # pydantic-settings reads names in any case
    assert refused() == "unknown environment variable retro_cooldwn; did you mean RETRO_COOLDOWN?"


def test_option_variables_are_accepted_and_retired_ones_point_at_the_option(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRO_VERBOSE", "1")
    assert "RETRO_VERBOSE" in refused()
    load_settings(other_env=["RETRO_VERBOSE"])
    monkeypatch.setenv("RETRO_CANCEL_ALL", "1")
    message = refused(other_env=["RETRO_VERBOSE"], command_line_only={"RETRO_CANCEL_ALL": "--all"})
    assert message == (
        "unknown environment variable RETRO_CANCEL_ALL; retro reads --all only from the "
        "command line"
    )


def test_every_setting_is_accepted_from_every_source(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The known keys are ``Settings.model_fields``: a field added there is accepted
    from the environment, .env and retro.toml with no other change."""
    names = list(Settings.model_fields)
    for name in names:
        monkeypatch.setenv(f"RETRO_{name.upper()}", "x")
    (folder / ".env").write_text("".join(f"RETRO_{n.upper()}=x\n" for n in names), "utf-8")
    (folder / "retro.toml").write_text("".join(f'{n} = "x"\n' for n in names), "utf-8")
    check_keys()  # names only: the values are checked by Settings


def test_the_test_harness_variables_are_the_ones_retro_accepts(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = {conftest.POSTGRES_ENV, conftest.REDIS_ENV, conftest.REQUIRE_ENV}
    assert harness == HARNESS_ENV
    for name in harness:
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv(crashpoints.ENV, "")
    check_keys()


def test_a_key_from_outside_never_breaks_the_line(folder: Path) -> None:
    (folder / "retro.toml").write_text('"max\\nin\\u001b[31mflight" = 4\n', encoding="utf-8")
    message = refused()
    assert message.startswith("unknown setting 'max\\nin\\x1b[31mflight' in retro.toml")
    assert "\x1b" not in message


def test_log_formats_are_the_loggers() -> None:
    assert get_args(LogFormat) == LOG_FORMATS


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::", "::1", "localhost", "m-1.internal"])
def test_an_http_host_is_an_address_or_a_name(folder: Path, host: str) -> None:
    assert load_settings(http_host=host).http_host == host
    assert load_settings(metrics_host=host).http_host == host


@pytest.mark.parametrize("host", ["", "not a host", "a..b", "-x.internal", "http://h"])
def test_a_bad_http_host_is_refused(folder: Path, host: str) -> None:
    message = refused(http_host=host)
    assert message.startswith("invalid setting http_host (RETRO_HTTP_HOST)")
    message = refused(metrics_host=host)
    assert message.startswith("invalid setting metrics_host (RETRO_METRICS_HOST)")


@pytest.mark.parametrize(("port", "ok"), [(0, True), (65535, True), (-1, False), (65536, False)])
def test_the_http_port_is_a_port(folder: Path, port: int, ok: bool) -> None:
    if ok:
        assert load_settings(http_port=port).http_port == port
        assert load_settings(metrics_port=port).http_port == port  # the deprecated name
    else:
        assert "RETRO_HTTP_PORT" in refused(http_port=port)
        assert "RETRO_METRICS_PORT" in refused(metrics_port=port)


def test_the_deprecated_names_set_the_new_ones(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``metrics_port``/``metrics_host`` (before the board) from any source set
    ``http_port``/``http_host`` and are named by ``deprecated()``; the new names alone
    warn of nothing; both with different values are refused, the same value is not."""
    (folder / "retro.toml").write_text('metrics_port = 9464\nmetrics_host = "::1"\n')
    settings = load_settings()
    assert (settings.http_port, settings.http_host) == (9464, "::1")
    assert settings.deprecated() == [
        "setting metrics_port is deprecated: use http_port (RETRO_HTTP_PORT)",
        "setting metrics_host is deprecated: use http_host (RETRO_HTTP_HOST)",
    ]
    monkeypatch.setenv("RETRO_HTTP_PORT", "9464")
    assert load_settings().http_port == 9464  # the same value twice: no conflict
    monkeypatch.setenv("RETRO_HTTP_PORT", "8080")
    message = refused()
    assert "metrics_port (deprecated) and http_port are both set" in message, message
    (folder / "retro.toml").unlink()
    assert load_settings().deprecated() == []
    assert load_settings().http_port == 8080


def _options() -> list[tuple[str, click.Option]]:
    found: list[tuple[str, click.Option]] = []

    def walk(command: click.Command, path: str) -> None:
        found.extend((path, p) for p in command.params if isinstance(p, click.Option))
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())

    walk(cli, "")
    return found


def test_an_option_for_a_setting_reads_the_settings_variable() -> None:
    """So Click and the settings read one variable; ``retro config`` then names ``env``."""
    seen = {p.name for _, p in _options() if p.name in Settings.model_fields}
    assert {"database_url", "http_port", "http_host", "metrics_port", "log_format"} <= seen
    for _, option in _options():
        if option.name in Settings.model_fields:
            assert option.envvar == f"RETRO_{option.name.upper()}", option.opts


def test_command_line_only_options_exist_and_read_no_variable() -> None:
    by_name = {f"{path} {'/'.join(p.opts + p.secondary_opts)}": p for path, p in _options()}
    for variable, option in COMMAND_LINE_ONLY.items():
        assert option in by_name, f"{option} ({variable}) is no option"
        assert by_name[option].envvar is None, option
        assert variable not in option_envvars(cli)


def test_docs_list_every_setting_and_every_variable() -> None:
    text = (Path(__file__).parents[2] / "docs" / "config.md").read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert f"| `{name}` |" in text, f"setting {name} has no row in docs/config.md"
    section = text.split("## Options and environment variables", 1)[1].split("\n## ", 1)[0]
    for variable in option_envvars(cli):
        assert f"`{variable}`" in section, f"{variable} is not in docs/config.md"
    for variable, option in COMMAND_LINE_ONLY.items():
        assert f"| `{option}`" in section and f"`{variable}`" in section, option


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e12"])
@pytest.mark.parametrize(
    "name", ["cooldown", "queue_wait_budget", "retry_backoff", "tick_interval"]
)
def test_durations_are_finite_and_bounded(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(**{name: value})


def test_a_long_chain_of_attempts_backs_off_at_most_a_day() -> None:
    from datetime import timedelta

    from retro.machine import MAX_BACKOFF, Policy

    policy = Policy(retry_backoff=5.0)
    assert policy.backoff(3) == timedelta(seconds=20)
    assert policy.backoff(100) == policy.backoff(10_000) == timedelta(seconds=MAX_BACKOFF)
