"""``retro demo --workdir``: only the demo's own folder is ever emptied."""

from __future__ import annotations

from pathlib import Path

import pytest

from retro.config import ConfigError
from retro.demo.scenario import MARKER, prepare_workdir


def test_a_folder_with_files_of_its_own_is_refused_and_kept(tmp_path: Path) -> None:
    (tmp_path / "important").mkdir()
    (tmp_path / "important" / "thesis.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a retro demo folder"):
        prepare_workdir(str(tmp_path))
    assert (tmp_path / "important" / "thesis.txt").read_text() == "x"
    assert not (tmp_path / MARKER).exists()


def test_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        prepare_workdir(str(target))
    assert target.read_text() == "x"


def test_new_empty_and_earlier_demo_folders_are_used(tmp_path: Path) -> None:
    fresh = prepare_workdir(str(tmp_path / "new"))
    assert sorted(p.name for p in fresh.iterdir()) == [MARKER]
    (fresh / "retro-demo.db").write_text("old run")
    (fresh / "notes").write_text("the demo's folder is the demo's")
    again = prepare_workdir(str(fresh))
    assert sorted(p.name for p in again.iterdir()) == [MARKER]
    # A folder an earlier retro left (its files only, no marker) is the demo's too.
    older = tmp_path / "older"
    older.mkdir()
    (older / "retro-demo.db").write_text("x")
    (older / "retro-demo-redis.db").write_text("x")
    assert sorted(p.name for p in prepare_workdir(str(older)).iterdir()) == [MARKER]
