"""Bad usage and bad configuration: exit 2, one ``retro: error:`` line that names the
problem, no traceback, no password, and nothing written (STYLE §9, DESIGN §7)."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import pytest

from retro.cli import COMMAND_LINE_ONLY, cli
from tests.conftest import Backend
from tests.e2e.clirunner import Result, invoke_retro, one_error_line, run_retro
from tests.e2e.hostdata import files, row_counts, seed_host, table_names, upgrade_retro

pytestmark = pytest.mark.e2e

SERVER_REDIS = "redis://127.0.0.1:6379/0"  # never reached: the database check fails first
PASSWORD = "s3cretpw"
HOST_TABLE_WORDS = ("host table", "models", "matches", "match_analysis", "predictions")

# (id, args, extra env, words the error line must name); each runs in an empty folder.
NO_DATABASE_CASES: list[tuple[str, list[str], dict[str, str], list[str]]] = [
    ("days-negative", ["start", "--days", "-1"], {}, ["--days", "-1"]),
    ("days-not-int", ["start", "--days", "abc"], {}, ["--days", "abc"]),
    ("days-too-large", ["start", "--days", "99999"], {}, ["--days", "99999"]),
    ("days-missing", ["start"], {}, ["--days", "missing"]),
    # --days chooses what start writes: read from the command line only (docs/config.md)
    ("days-env-refused", ["start", "--days", "3"], {"RETRO_DAYS": "14"}, ["RETRO_DAYS", "--days"]),
    (
        "setting-typo-in-env",
        ["run", "--max-in-flight", "2"],
        {"RETRO_MAX_INFLIGHT": "4"},
        ["unknown environment variable RETRO_MAX_INFLIGHT", "did you mean RETRO_MAX_IN_FLIGHT"],
    ),
    ("unknown-command", ["frobnicate"], {}, ["frobnicate"]),
    ("max-in-flight-zero", ["run", "--max-in-flight", "0"], {}, ["--max-in-flight", "0"]),
    # NaN compares false with both bounds of a range: it passed click.FloatRange
    ("eta-window-nan", ["backfills", "--eta-window", "nan"], {}, ["--eta-window", "nan"]),
    ("interval-nan", ["status", "--watch", "--interval", "nan"], {}, ["--interval", "nan"]),
    (
        "unknown-database-scheme",
        ["start", "--days", "3", "--database-url", f"mysql://u:{PASSWORD}@127.0.0.1:1/x"],
        {},
        ["RETRO_DATABASE_URL", "mysql"],
    ),
    (
        "unknown-redis-scheme",
        ["status", "--redis-url", f"http://u:{PASSWORD}@127.0.0.1:1/0"],
        {},
        ["RETRO_REDIS_URL", "http"],
    ),
    (
        "postgres-unreachable",
        ["start", "--days", "3"],
        {
            "RETRO_DATABASE_URL": f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:1/x",
            "RETRO_REDIS_URL": "redis://127.0.0.1:1/0",
        },
        ["unreachable", "u:***@127.0.0.1:1"],
    ),
    (
        "postgres-with-embedded-redis",
        ["start", "--days", "3"],
        {"RETRO_DATABASE_URL": f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:1/x"},
        ["embedded", "PostgreSQL", "RETRO_REDIS_URL"],
    ),
    (
        "sqlite-file-missing",
        ["start", "--days", "14", "--database-url", "sqlite+aiosqlite:///nope.db"],
        {},
        ["nope.db", "not exist"],
    ),
    # The embedded default: sqlite+aiosqlite:///retro.db in the working directory.
    ("start-default-database-missing", ["start", "--days", "3"], {}, ["retro.db", "not exist"]),
    ("status-default-database-missing", ["status"], {}, ["retro.db", "not exist"]),
    ("run-default-database-missing", ["run", "--until-idle"], {}, ["retro.db", "not exist"]),
    ("db-upgrade-default-database-missing", ["db", "upgrade"], {}, ["retro.db", "not exist"]),
    (
        "run-database-folder-missing",
        ["run", "--until-idle", "--database-url", "sqlite+aiosqlite:///no/such/dir/x.db"],
        {},
        ["x.db", "not exist"],
    ),
]


def _commands() -> list[tuple[str, ...]]:
    """Every leaf command's path: ``("start",)`` … ``("db", "upgrade")``."""
    found: list[tuple[str, ...]] = []

    def walk(group: click.Group, path: tuple[str, ...]) -> None:
        for name, command in sorted(group.commands.items()):
            if isinstance(command, click.Group):
                walk(command, (*path, name))
            else:
                found.append((*path, name))

    walk(cli, ())
    return found


def _options(path: tuple[str, ...]) -> list[click.Option]:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]


HELP_CASES = [("--help",), *((*path, "--help") for path in _commands())]


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Result]]:
    """Every case that needs no database, two at a time, each in its own empty folder.

    Keyed by case id (help cases by their command line); value: (folder, result).
    """
    jobs: dict[str, tuple[Path, list[str], dict[str, str]]] = {}
    for case_id, args, env, _ in NO_DATABASE_CASES:
        jobs[case_id] = (tmp_path_factory.mktemp(case_id), args, env)
    for help_args in HELP_CASES:
        jobs[" ".join(help_args)] = (tmp_path_factory.mktemp("help"), list(help_args), {})
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            key: pool.submit(run_retro, *args, cwd=cwd, env=env)
            for key, (cwd, args, env) in jobs.items()
        }
        return {key: (jobs[key][0], future.result()) for key, future in futures.items()}


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0]) for c in NO_DATABASE_CASES])
def test_usage_error_is_one_line_and_writes_nothing(
    ran: dict[str, tuple[Path, Result]],
    case: tuple[str, list[str], dict[str, str], list[str]],
) -> None:
    cwd, result = ran[case[0]]
    one_error_line(result, *case[3])
    assert PASSWORD not in result.output
    assert files(cwd) == {}, "nothing may be written to the working directory"


def test_help_lists_the_commands(ran: dict[str, tuple[Path, Result]]) -> None:
    cwd, result = ran["--help"]
    assert result.code == 0, result
    for command in ("start", "status", "run", "workers", "demo", "db"):
        assert f"  {command} " in result.stdout, result
    assert files(cwd) == {}


@pytest.mark.parametrize("path", _commands(), ids=" ".join)
def test_every_command_help_shows_its_env_vars(
    ran: dict[str, tuple[Path, Result]], path: tuple[str, ...]
) -> None:
    cwd, result = ran[" ".join((*path, "--help"))]
    assert result.code == 0, result
    text = " ".join(result.stdout.split())
    options = _options(path)
    assert options, f"retro {' '.join(path)} has no options"
    command_line_only = set(COMMAND_LINE_ONLY.values())
    for option in options:
        envvar = option.envvar
        if f"{' '.join(path)} {'/'.join(option.opts + option.secondary_opts)}" in command_line_only:
            assert envvar is None, f"{option.opts} acts, yet reads {envvar}"
            continue
        assert isinstance(envvar, str), f"{option.opts} has no RETRO_* env var"
        assert envvar.startswith("RETRO_"), envvar
        assert f"env var: {envvar}" in text, f"{envvar} not shown in\n{result.stdout}"
    if path == ("start",):
        assert "env var: RETRO_DATABASE_URL" in text
        assert "RETRO_DAYS" not in text and "RETRO_DRY_RUN" not in text
    assert files(cwd) == {}


def _foreign_sqlite(path: Path, *, empty: bool) -> None:
    """A SQLite file that is not the pipeline's: 0 bytes, or one unrelated table."""
    conn = sqlite3.connect(path)
    if not empty:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes (body) VALUES ('keep me')")
        conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("empty", "command"),
    [
        pytest.param(True, ["start", "--days", "14"], id="zero-bytes-start"),
        pytest.param(False, ["status"], id="unrelated-table-status"),
    ],
)
def test_sqlite_without_host_tables_gets_no_tables(
    tmp_path: Path, empty: bool, command: list[str]
) -> None:
    path = tmp_path / "other.db"
    _foreign_sqlite(path, empty=empty)
    tables = table_names(f"sqlite:///{path}")
    before = set(files(tmp_path))
    result = run_retro(
        *command, cwd=tmp_path, env={"RETRO_DATABASE_URL": f"sqlite+aiosqlite:///{path}"}
    )
    one_error_line(result, *HOST_TABLE_WORDS)
    assert table_names(f"sqlite:///{path}") == tables, "no backfill tables in a foreign file"
    assert set(files(tmp_path)) == before


@pytest.mark.parametrize("empty", [True, False], ids=["zero-bytes", "unrelated-table"])
def test_sqlite_without_host_tables_is_left_byte_for_byte(tmp_path: Path, empty: bool) -> None:
    """Refusing a file must not rewrite it (e.g. switch its journal mode to WAL)."""
    path = tmp_path / "other.db"
    _foreign_sqlite(path, empty=empty)
    before = path.read_bytes()
    result = run_retro(
        "start",
        "--days",
        "14",
        cwd=tmp_path,
        env={"RETRO_DATABASE_URL": f"sqlite+aiosqlite:///{path}"},
    )
    one_error_line(result, "host table")
    assert files(tmp_path) == {"other.db": len(before)}
    assert path.read_bytes() == before, "the refused SQLite file was modified"


def test_postgres_without_host_tables_gets_no_tables(tmp_path: Path, postgres_url: str) -> None:
    result = run_retro(
        "start",
        "--days",
        "14",
        cwd=tmp_path,
        env={"RETRO_DATABASE_URL": postgres_url, "RETRO_REDIS_URL": SERVER_REDIS},
    )
    one_error_line(result, *HOST_TABLE_WORDS)
    assert table_names(postgres_url) == set()
    assert files(tmp_path) == {}


def test_postgres_without_retro_tables_asks_for_db_upgrade(
    tmp_path: Path, postgres_url: str
) -> None:
    seed_host(postgres_url)
    before = row_counts(postgres_url)
    result = run_retro(
        "start",
        "--days",
        "14",
        cwd=tmp_path,
        env={"RETRO_DATABASE_URL": postgres_url, "RETRO_REDIS_URL": SERVER_REDIS},
    )
    one_error_line(result, "backfill_runs", "retro db upgrade")
    assert row_counts(postgres_url) == before
    assert files(tmp_path) == {}


def test_status_with_unreachable_redis_masks_its_password(tmp_path: Path, backend: Backend) -> None:
    seed_host(backend.database_url)
    upgrade_retro(backend.database_url)
    counts = row_counts(backend.database_url)
    before = set(files(tmp_path))
    redis_url = f"redis://:{PASSWORD}@127.0.0.1:1/0"
    result = run_retro("status", cwd=tmp_path, env={**backend.env(), "RETRO_REDIS_URL": redis_url})
    # The database answered: status still reports the runs, names Redis as the
    # dependency that did not, and exits 1 (a failure, not bad usage).
    assert result.code == 1, result
    assert "Database: reachable" in result.stdout, result
    assert "Redis: UNREACHABLE" in result.stdout, result
    assert "redis://:***@127.0.0.1:1/0" in result.stdout, result
    assert "Runs" in result.stdout, result
    assert PASSWORD not in result.output
    assert row_counts(backend.database_url) == counts
    assert set(files(tmp_path)) == before


@pytest.mark.parametrize(
    "args",
    [
        ["history", "\udcff\udcfeab"],
        ["cancel", "m-\udcff"],
        ["status", "--backfill", "\udcff"],
        ["runs", "--match", "\udcff"],
    ],
    ids=["history", "cancel", "status-backfill", "runs-match"],
)
def test_an_argument_that_is_not_utf8_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    """Bytes that are not UTF-8 on the command line (Python keeps them as lone
    surrogates) are exit 2 naming the argument, before anything is opened; they
    reached the database driver and came back as exit 1, ``UnicodeEncodeError``."""
    line = one_error_line(invoke_retro(*args, cwd=tmp_path), "not valid UTF-8", "\\udcff")
    assert "UnicodeEncodeError" not in line
    assert files(tmp_path) == {}
