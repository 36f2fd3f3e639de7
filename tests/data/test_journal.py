"""The spec folder: what a changed spec clears (whole folder, single splits), a sync killed half-way, the flock that
ranks share, and the journal (last entry wins, lines cut by a kill, concurrent appends of two processes, keep)."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from pathlib import Path

import pytest

from vaflow.data import journal as journal_module
from vaflow.data.journal import JOURNAL_FILE, LOCK_FILE, SPEC_FILE, SpecFolder


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _fill(root: Path, splits: tuple[str, ...] = ("train", "test")) -> None:
    for split in splits:
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / "x-000000.tar").write_bytes(split.encode())


# ----------------------------------------------------------------------------------------------------------------
# sync
# ----------------------------------------------------------------------------------------------------------------


def test_a_folder_spec_keeps_everything_while_equal_and_clears_everything_when_changed(tmp_path):
    folder = SpecFolder(tmp_path / "out")
    assert folder.sync({"model": "a", "code": "c1"}) == {}  # an empty folder: nothing to clear
    (folder.root / "clip0.wav").write_bytes(b"w")
    (folder.root / "sub").mkdir()
    (folder.root / "sub" / "f").write_bytes(b"f")
    # Equal up to JSON types (a tuple is a list): kept, spec.json not rewritten.
    stamp = (folder.root / SPEC_FILE).stat().st_mtime_ns
    assert SpecFolder(folder.root).sync({"code": "c1", "model": "a"}) == {}
    assert (folder.root / SPEC_FILE).stat().st_mtime_ns == stamp
    assert _files(folder.root) == [LOCK_FILE, "clip0.wav", SPEC_FILE, "sub/f"]
    # Another code identity: everything but the lock goes, then the new spec is recorded.
    assert folder.sync({"model": "a", "code": "c2"}) == {"clip0.wav": 1, "sub": 1}
    assert _files(folder.root) == [LOCK_FILE, SPEC_FILE]
    assert json.loads((folder.root / SPEC_FILE).read_text()) == {"model": "a", "code": "c2"}


def test_a_split_spec_clears_only_the_splits_whose_entry_changed(tmp_path):
    folder = SpecFolder(tmp_path)
    spec = {"encoder": "e", "splits": {"train": {"clips": 2}, "test": {"clips": 1}}}
    folder.sync(spec)
    _fill(tmp_path, ("train", "test", "val"))  # val: a split the spec does not list
    assert folder.sync(spec) == {}  # unchanged: even an unlisted folder stays
    changed = {"encoder": "e", "splits": {"train": {"clips": 2}, "test": {"clips": 3}}}
    assert folder.sync(changed) == {"test": 1, "val": 1}
    assert _files(tmp_path) == [LOCK_FILE, SPEC_FILE, "train/x-000000.tar"]
    # A dropped split goes; a change outside "splits" clears every split.
    _fill(tmp_path, ("test",))
    assert folder.sync({"encoder": "e", "splits": {"test": {"clips": 3}}}) == {"train": 1}
    _fill(tmp_path, ("train",))
    assert folder.sync({"encoder": "f", "splits": {"train": {"clips": 2}, "test": {"clips": 3}}}) == {
        "test": 1,
        "train": 1,
    }


def test_a_missing_or_unreadable_spec_clears_everything(tmp_path):
    _fill(tmp_path)
    (tmp_path / SPEC_FILE).write_text("{not json")
    spec = {"splits": {"train": {}, "test": {}}}
    assert SpecFolder(tmp_path).sync(spec) == {"test": 1, "train": 1}
    (tmp_path / SPEC_FILE).unlink()
    _fill(tmp_path)
    assert SpecFolder(tmp_path).sync(spec) == {"test": 1, "train": 1}


def test_a_sync_killed_while_clearing_is_finished_by_the_next_one(tmp_path, monkeypatch):
    folder = SpecFolder(tmp_path)
    folder.sync({"v": 1, "splits": {"a": {}, "b": {}}})
    _fill(tmp_path, ("a", "b"))
    real = shutil.rmtree
    calls = []

    def dies_on_second(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is stopped half-way through the clearing
        real(path, *args, **kwargs)

    monkeypatch.setattr(journal_module.shutil, "rmtree", dies_on_second)
    new = {"v": 2, "splits": {"a": {}, "b": {}}}
    with pytest.raises(KeyboardInterrupt):
        folder.sync(new)
    assert json.loads((tmp_path / SPEC_FILE).read_text())["v"] == 1  # the old spec: the clearing is not done
    monkeypatch.setattr(journal_module.shutil, "rmtree", real)
    assert folder.sync(new) == {"b": 1}
    assert _files(tmp_path) == [LOCK_FILE, SPEC_FILE]


@pytest.mark.parametrize("splits", [{}, ["train"], {"../up": {}}, {".hidden": {}}, {"a/b": {}}])
def test_bad_split_names_are_refused_before_anything_is_deleted(tmp_path, splits):
    _fill(tmp_path)
    with pytest.raises(ValueError, match="splits|split name"):
        SpecFolder(tmp_path).sync({"splits": splits})
    assert _files(tmp_path) == ["test/x-000000.tar", "train/x-000000.tar"]


def test_a_later_rank_with_the_same_spec_keeps_the_first_ranks_work(tmp_path):
    spec = {"v": 1, "splits": {"train": {"clips": 4}}}
    first, second = SpecFolder(tmp_path), SpecFolder(tmp_path)  # two processes' views of one folder
    assert first.sync(spec) == {}
    _fill(tmp_path, ("train",))  # rank 0 has written a shard
    assert second.sync(spec) == {}  # rank 1 starts late
    assert _files(tmp_path) == [LOCK_FILE, SPEC_FILE, "train/x-000000.tar"]


def _hold_lock(root: str, ready, seconds: float) -> None:
    folder = SpecFolder(root)
    with folder.locked():
        ready.set()
        time.sleep(seconds)
        (Path(root) / "written-under-lock").write_text("x")
        folder.journal().done("child", {})


def test_sync_waits_for_another_process_holding_the_lock(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, 0.5))
    proc.start()
    try:
        assert ready.wait(60), "the child never took the lock"
        # The child writes its file just before releasing the lock: a sync that did not wait would miss it.
        assert SpecFolder(tmp_path).sync({"v": 1}) == {JOURNAL_FILE: 1, "written-under-lock": 1}
    finally:
        proc.join(60)
    assert proc.exitcode == 0


# ----------------------------------------------------------------------------------------------------------------
# The journal
# ----------------------------------------------------------------------------------------------------------------


def test_journal_last_entry_of_an_item_wins_and_a_cut_line_is_skipped(tmp_path):
    folder = SpecFolder(tmp_path)
    journal = folder.journal("train")
    assert journal.path == tmp_path / "train" / JOURNAL_FILE
    journal.reject("c1", "decode failed:\n  broken")
    journal.done("c2", {"nfe": 4})
    journal.reject("c3", "silent")
    journal.done("c3", {"nfe": 5})  # redone after a rejection (e.g. a timeout): done now
    journal.done("c4", {"nfe": 6})
    journal.reject("c4", "non-finite")
    with journal.path.open("a") as f:
        f.write('{"item": "c5", "rej')  # a kill in the middle of a line
    journal.reject("c6", "too short")  # the next line starts on a line of its own
    entries = folder.journal("train").read()
    assert entries.rejected == {"c1": "decode failed: broken", "c4": "non-finite", "c6": "too short"}
    assert entries.done == {"c2": {"nfe": 4}, "c3": {"nfe": 5}}
    journal.remove()
    assert not journal.path.exists() and folder.journal("train").read().done == {}


def test_journal_keep_drops_every_entry_but_the_last_of_the_items_kept(tmp_path):
    journal = SpecFolder(tmp_path).journal()
    journal.keep({"a"})  # no journal yet: nothing to do
    assert not journal.path.exists()
    journal.reject("a", "timeout")
    journal.done("a", {"n": 1})
    journal.done("stale", {"n": 2})
    journal.reject("b", "too short")
    journal.keep({"a", "b", "c"})
    assert [json.loads(line)["item"] for line in journal.path.read_text().splitlines()] == ["a", "b"]
    entries = journal.read()
    assert entries.done == {"a": {"n": 1}} and entries.rejected == {"b": "too short"}
    stamp = journal.path.stat().st_mtime_ns
    journal.keep({"a", "b"})  # nothing to drop: the file is not rewritten
    assert journal.path.stat().st_mtime_ns == stamp


def test_an_append_waits_for_another_process_holding_the_lock(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, 0.5))
    proc.start()
    try:
        assert ready.wait(60), "the child never took the lock"
        SpecFolder(tmp_path).journal().done("parent", {})
    finally:
        proc.join(60)
    assert proc.exitcode == 0
    lines = [json.loads(line)["item"] for line in (tmp_path / JOURNAL_FILE).read_text().splitlines()]
    assert lines == ["child", "parent"]  # the child's line, appended just before it let go, comes first


def _append_many(root: str, worker: int, n: int) -> None:
    journal = SpecFolder(root).journal()
    for i in range(n):
        journal.done(f"w{worker}-{i}", {"payload": "x" * 3000})


def test_two_processes_append_without_losing_or_mixing_lines(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, 150)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    done = SpecFolder(tmp_path).journal().read().done
    assert sorted(done) == sorted(f"w{w}-{i}" for w in range(2) for i in range(150))
    assert len((tmp_path / JOURNAL_FILE).read_text().splitlines()) == 300
