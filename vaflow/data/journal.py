"""A folder whose contents belong to one spec: what a changed spec invalidates is cleared, and the work done in it
is journalled so that a killed run resumes (DESIGN §8, §9).

In full: docs/library.md, `vaflow.data.journal`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from vaflow import atomic
from vaflow.config.section import jsonable

__all__ = ["JOURNAL_FILE", "LOCK_FILE", "SPEC_FILE", "SPLITS", "Entries", "Journal", "SpecFolder"]

SPEC_FILE = "spec.json"
LOCK_FILE = ".lock"
JOURNAL_FILE = ".journal.jsonl"
SPLITS = "splits"  # the spec key whose entries each own one subfolder


def _remove(path: Path) -> int:
    """Delete a file or a folder tree; returns the number of files it held."""
    if path.is_dir() and not path.is_symlink():
        n = sum(1 for p in path.rglob("*") if not p.is_dir())
        shutil.rmtree(path)
        return n
    path.unlink(missing_ok=True)
    return 1


class SpecFolder:
    """The folder `root`, owned by one spec at a time; see the module docstring for the layout and rules."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock: TextIO | None = None
        self._depth = 0  # `locked` is re-entrant: a flock on a second descriptor would wait on the first

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's exclusive lock, shared by every process that opens the same root (flock: the OS
        releases it when a process dies)."""
        if self._depth == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = (self.root / LOCK_FILE).open("a")
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._lock = lock
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._lock is not None:
                self._lock.close()  # closing the only descriptor releases the flock
                self._lock = None

    def read_spec(self) -> dict[str, Any] | None:
        """The recorded spec.json, or None when there is none (or it is unreadable, e.g. written by hand)."""
        try:
            spec = json.loads((self.root / SPEC_FILE).read_text())
        except (OSError, ValueError):
            return None
        return spec if isinstance(spec, dict) else None

    def sync(self, spec: Mapping[str, Any]) -> dict[str, int]:
        """Make the folder hold only what `spec` allows, then record `spec`. Returns {entry: files deleted} for
        every top-level entry removed (a split's subfolder, or a file of the folder); empty when nothing was."""
        spec = jsonable(dict(spec))
        splits = self._check_splits(spec)
        with self.locked():
            old = self.read_spec()
            if old == spec:
                return {}
            kept: set[str] = (
                set()
            )  # split folders whose entry, and everything outside "splits", are unchanged
            if old is not None and splits is not None and isinstance(old.get(SPLITS), dict):
                common_old = {k: v for k, v in old.items() if k != SPLITS}
                common_new = {k: v for k, v in spec.items() if k != SPLITS}
                if common_old == common_new:
                    kept = {name for name, entry in splits.items() if old[SPLITS].get(name) == entry}
            removed = {}
            for path in sorted(self.root.iterdir()):
                if path.name in (SPEC_FILE, LOCK_FILE) or (path.name in kept and path.is_dir()):
                    continue
                removed[path.name] = _remove(path)
            atomic.write_json(self.root / SPEC_FILE, spec)
            return removed

    def _check_splits(self, spec: Mapping[str, Any]) -> dict[str, Any] | None:
        """The spec's "splits" mapping (None when it has none), each name a plain folder name."""
        if SPLITS not in spec:
            return None
        splits = spec[SPLITS]
        where = f"spec for {self.root}"
        if not isinstance(splits, dict) or not splits:
            raise ValueError(
                f"{where}: '{SPLITS}' must map split names to their spec entries, got {splits!r}"
            )
        for name in splits:
            if not name or "/" in name or name.startswith(".") or name in (SPEC_FILE, LOCK_FILE):
                raise ValueError(f"{where}: split name {name!r} is not a plain folder name")
        return splits

    def journal(self, split: str | None = None) -> Journal:
        """The journal of one split (`<root>/<split>/.journal.jsonl`), or of the whole folder (None)."""
        folder = self.root if split is None else self.root / split
        return Journal(folder / JOURNAL_FILE, self)


@dataclass(frozen=True)
class Entries:
    """A journal as read: the last line of each item decides whether it is done or rejected."""

    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # item -> its record
    rejected: dict[str, str] = field(default_factory=dict)  # item -> reason


class Journal:
    """Append-only JSON lines `{"item": …, "done": {record}}` or `{"item": …, "rejected": reason}` at `path`,
    written under the folder's lock (see the module docstring)."""

    def __init__(self, path: Path, folder: SpecFolder):
        self.path = path
        self.folder = folder

    def done(self, item: str, record: Mapping[str, Any]) -> None:
        """Record `item` as finished, with what its summary row needs."""
        self._append({"item": item, "done": dict(record)})

    def reject(self, item: str, reason: str) -> None:
        """Record `item` as rejected, with a one-line reason."""
        self._append({"item": item, "rejected": " ".join(str(reason).split())})

    def _append(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        with self.folder.locked():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a+b") as f:
                if f.seek(0, 2) > 0:
                    f.seek(-1, 2)
                    if f.read(1) != b"\n":  # a line cut by a kill: end it, so this entry stays readable
                        line = b"\n" + line
                f.write(line)

    def read(self) -> Entries:
        """Every rank's entries so far; unreadable lines (cut by a kill) are skipped."""
        entries = Entries()
        with self.folder.locked():
            lines = self._lines()
        for item, entry, _ in lines:
            if isinstance(entry.get("done"), dict):
                entries.rejected.pop(item, None)
                entries.done[item] = entry["done"]
            elif isinstance(entry.get("rejected"), str):
                entries.done.pop(item, None)
                entries.rejected[item] = entry["rejected"]
        return entries

    def keep(self, items: Collection[str]) -> None:
        """Drop every entry but the last of each of `items`, e.g. the items a finished run used, so that a journal
        kept from run to run does not grow with the entries of items since gone or changed."""
        with self.folder.locked():
            lines = self._lines()
            last = {item: line for item, _, line in lines if item in items}
            if len(last) == len(lines):  # nothing to drop (a cut line is not counted: it stays until then)
                return
            atomic.write_text(self.path, "".join(line + "\n" for line in last.values()))

    def _lines(self) -> list[tuple[str, dict[str, Any], str]]:
        """(item, entry, line) of each readable line, in file order (call under the lock)."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                item = entry["item"]
            except (ValueError, TypeError, KeyError):
                continue
            if isinstance(item, str):
                out.append((item, entry, line))
        return out

    def remove(self) -> None:
        """Delete the journal, once its owner has folded it into the part's summary file."""
        with self.folder.locked():
            self.path.unlink(missing_ok=True)
