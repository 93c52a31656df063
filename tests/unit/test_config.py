"""Settings validation and the outage rule: bad values are one clear, masked message."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy.exc import OperationalError

from retro.config import ConfigError, load_settings, mask, mask_url
from retro.store.db import is_unreachable

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
