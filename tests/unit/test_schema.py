"""The store's literal SQL agrees with the machine's states."""

from __future__ import annotations

from retro.machine import IN_FLIGHT
from retro.store.schema import IN_FLIGHT_SQL


def test_in_flight_sql_names_exactly_the_in_flight_states() -> None:
    inside = IN_FLIGHT_SQL.removeprefix("state IN (").removesuffix(")")
    assert {name.strip().strip("'") for name in inside.split(",")} == {str(s) for s in IN_FLIGHT}
