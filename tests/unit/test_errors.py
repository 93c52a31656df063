"""The operator-facing errors form one family whose exit codes are the documented ones."""

from __future__ import annotations

import pytest

from retro.commands import Refused, RetryRefused
from retro.config import ConfigError
from retro.errors import EXIT_USAGE, RetroError
from retro.lookup import Unresolved
from retro.queue import RedisUnreachable
from retro.scheduler import DaemonLocked
from retro.store.db import DatabaseUnreachable, HostTablesMissing, RetroTablesMissing, StoreError


@pytest.mark.parametrize(
    "error",
    [
        ConfigError,
        StoreError,
        DatabaseUnreachable,
        HostTablesMissing,
        RetroTablesMissing,
        RedisUnreachable,
        DaemonLocked,
        RetryRefused,
        Refused,
        Unresolved,
    ],
)
def test_bad_usage_or_configuration_exits_2(error: type[Exception]) -> None:
    # docs/production.md: code 2 is "bad usage or configuration, nothing done".
    assert issubclass(error, RetroError)
    assert error.exit_code == 2 == EXIT_USAGE


def test_an_unexpected_error_is_no_retro_error() -> None:
    assert not issubclass(RuntimeError, RetroError)
    assert RetroError("x").exit_code == 1
