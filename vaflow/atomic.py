"""Atomic writes: a reader (or a crash) sees the old file or folder or the new one, never a partial one (DESIGN §9)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a uniquely named temporary file in the same folder and a rename.

    The temporary name is unique per call, so concurrent writers (ranks, worker processes) never share one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # mkstemp creates 0600; these are ordinary outputs
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: Any, indent: int = 2) -> None:
    """`data` as sorted, indented JSON, written atomically."""
    write_text(path, json.dumps(data, indent=indent, sort_keys=True) + "\n")


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """For writers that need a file name (safetensors, torch.save, wave, matplotlib): yields a unique temporary
    path beside `path`; when the block ends without an error it is renamed onto `path`, otherwise deleted.

        with atomic.replacing(out / "model.safetensors") as tmp:
            save_file(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp creates 0600; these are ordinary outputs
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _aside(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.previous")


def recover(folder: str | os.PathLike) -> bool:
    """Put back the content a killed `replacing_folders` block set aside (the folder beside it is partial).

    True when there was something to put back.
    """
    folder = Path(folder)
    aside = _aside(folder)
    if not aside.is_dir():
        return False
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(aside, folder)
    return True


@contextmanager
def replacing_folders(folders: list[Path]) -> Iterator[None]:
    """The block writes `folders` from empty; their previous content is set aside as `.<name>.previous` and
    comes back when the block fails (or, after a kill, at the next `recover`), and goes when it succeeds."""
    moved: list[Path] = []
    try:
        for folder in folders:
            recover(folder)
            if folder.exists():
                os.replace(folder, _aside(folder))
            moved.append(folder)
            folder.mkdir(parents=True)
        yield
    except BaseException:
        for folder in moved:
            shutil.rmtree(folder, ignore_errors=True)
            recover(folder)
        raise
    for folder in folders:
        shutil.rmtree(_aside(folder), ignore_errors=True)
