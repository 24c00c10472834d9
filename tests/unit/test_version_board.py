"""The version board (storage/version_board.py): a write is seen as in flight from before its
commit until after it, a finished write changes the mark, a writer that died mid-way leaves its
slots read-from-the-store for good, and every process that maps the file sees the same board."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import cast

import pytest

from stepguard.core.errors import StoreUnavailable
from stepguard.storage import version_board
from stepguard.storage.version_board import SLOTS, VersionBoard, slot_of
from tests.unit.test_pg_roundtrip import implementation, twin_of


@pytest.fixture(params=[pytest.param(version_board, id="python"),
                        pytest.param("compiled", id="compiled")])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The board's module as Python or as its compiled twin (which the SQL store takes)."""
    return implementation(request, version_board)


@pytest.fixture
def board(impl: ModuleType, tmp_path: Path) -> VersionBoard:
    return cast(VersionBoard, impl.VersionBoard.beside(tmp_path / "store.db"))


def test_a_finished_write_changes_the_mark_of_its_ids_only(board: VersionBoard) -> None:
    before = board.mark("session-1", "user-1")
    other = board.mark("session-2", "user-2")
    assert before is not None and other is not None
    with board.writing(["session-1"]):
        assert board.mark("session-1", "user-1") is None  # in flight: never recorded
        assert board.mark("session-2", "user-2") == other
    after = board.mark("session-1", "user-1")
    assert after is not None and after != before
    assert board.mark("session-2", "user-2") == other


def test_a_user_write_changes_the_mark_of_every_session_of_the_user(board: VersionBoard) -> None:
    marks = [board.mark(f"session-{i}", "user-1") for i in range(3)]
    with board.writing(["user-1"]):
        pass
    assert all(board.mark(f"session-{i}", "user-1") != marks[i] for i in range(3))


def test_a_failed_commit_still_ends_its_write(board: VersionBoard) -> None:
    with pytest.raises(RuntimeError), board.writing(["session-1"]):
        raise RuntimeError("commit failed")
    assert board.mark("session-1", "user-1") is not None


def test_a_writer_that_died_mid_write_leaves_its_slot_in_flight(impl: ModuleType,
                                                                tmp_path: Path) -> None:
    code = ("import os, sys; from pathlib import Path; "
            "from stepguard.storage.version_board import VersionBoard; "
            "b = VersionBoard.beside(Path(sys.argv[1])); "
            "w = b.writing(['session-1']); w.__enter__(); os._exit(0)")  # no finally: a crash
    src = Path(__file__).parents[2] / "src"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "store.db")], check=True,
                   env={"PYTHONPATH": str(src)})
    board = impl.VersionBoard.beside(tmp_path / "store.db")
    assert board.mark("session-1", "user-1") is None  # every request reads the store
    assert board.mark("session-2", "user-2") is not None


def test_processes_share_one_board_per_database_file(impl: ModuleType, tmp_path: Path) -> None:
    mine, theirs = (impl.VersionBoard.beside(tmp_path / "store.db") for _ in range(2))
    before = mine.mark("session-1", "user-1")
    with theirs.writing(["user-1"]):
        assert mine.mark("session-1", "user-1") is None
    assert mine.mark("session-1", "user-1") not in (None, before)
    assert (tmp_path / "store.db-stepguard-board").stat().st_mode & 0o777 == 0o600


def test_boards_of_other_databases_and_private_boards_are_apart(impl: ModuleType,
                                                               tmp_path: Path) -> None:
    one, two = (impl.VersionBoard.beside(tmp_path / name) for name in ("a.db", "b.db"))
    private = impl.VersionBoard(None)
    before = (two.mark("s", "u"), private.mark("s", "u"))
    with one.writing(["s"]):
        pass
    assert (two.mark("s", "u"), private.mark("s", "u")) == before


def test_an_unopenable_board_is_an_unavailable_store(impl: ModuleType, tmp_path: Path) -> None:
    board = impl.VersionBoard.beside(tmp_path / "missing" / "store.db")
    with pytest.raises(StoreUnavailable):
        board.mark("s", "u")
    with pytest.raises(StoreUnavailable), board.writing(["s"]):
        pass


def test_slots_are_the_same_in_every_process() -> None:
    code = "from stepguard.storage.version_board import slot_of; print(slot_of('session-1'))"
    src = Path(__file__).parents[2] / "src"
    printed = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                             text=True, env={"PYTHONPATH": str(src), "PYTHONHASHSEED": "7"})
    assert int(printed.stdout) == slot_of("session-1") < SLOTS


def test_remembered_slot_offsets_stay_bounded_and_right(impl: ModuleType, board: VersionBoard,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The board remembers where each id's slot is (no hash per read), at most
    `OFFSETS_REMEMBERED` ids, and a forgotten id's mark is as right as a remembered one's."""
    monkeypatch.setattr(impl, "OFFSETS_REMEMBERED", 4)
    with board.writing(["session-0"]):
        pass
    first = board.mark("session-0", "user-0")
    assert first is not None and first[0] == 1  # its slot's one finished write
    for i in range(1, 3):  # two more pairs: six ids seen, never more than four remembered
        board.mark(f"session-{i}", f"user-{i}")
        assert len(board._offsets) <= 4
    assert board._offsets == {"session-2": slot_of("session-2") * 2,
                              "user-2": slot_of("user-2") * 2}  # started afresh when full
    assert board.mark("session-0", "user-0") == first  # forgotten, found again the same
    with board.writing(["user-2"]):
        pass
    assert board.mark("session-2", "user-2") == (0, 1)  # remembered: the same slots read


def test_a_compiled_and_a_python_board_share_one_file(tmp_path: Path) -> None:
    """Processes may differ in whether the twin was built: both read the same words."""
    compiled = twin_of(version_board)
    if compiled is None:
        pytest.skip("no compiled twin (scripts/accelerate.py not run)")
    mine = compiled.VersionBoard.beside(tmp_path / "store.db")
    theirs = version_board.VersionBoard.beside(tmp_path / "store.db")
    before = mine.mark("session-1", "user-1")
    assert theirs.mark("session-1", "user-1") == before
    with theirs.writing(["session-1"]):
        assert mine.mark("session-1", "user-1") is None
    after = mine.mark("session-1", "user-1")
    assert after not in (None, before) and theirs.mark("session-1", "user-1") == after
