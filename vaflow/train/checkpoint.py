"""Training checkpoints: atomic writes with a kept previous copy, safe loading, config checks, RNG states.

Layout of a checkpoint directory:

    last.pt            the newest checkpoint (always complete: written to a temp file, then `os.replace`d)
    last.pt.prev       the one before it; used, with a warning, when `last.pt` is missing or unreadable
    step-00001000.pt   optional step-numbered copies (`keep_checkpoints`), hard links where the filesystem allows

A checkpoint is a dict of tensors and plain Python values only: the config is stored as a JSON-able dict and
every load uses `torch.load(weights_only=True)`, so opening a checkpoint never runs pickled code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaflow import atomic
from vaflow.config.section import flatten, jsonable
from vaflow.config.trainer import RESUMABLE_KEYS
from vaflow.errors import UserError

log = logging.getLogger("vaflow.train")

LAST = "last.pt"
PREV = "last.pt.prev"
FORMAT = 1  # bump when the layout of the checkpoint dict changes incompatibly
REQUIRED_KEYS = ("format", "step", "model", "ema", "optimizer", "config")


class CheckpointError(RuntimeError, UserError):
    """A checkpoint that cannot be used; the message names the file."""


class ConfigMismatchError(ValueError, UserError):
    """Resuming with a config that differs from the checkpoint's; the message names each key, old and new."""


# --------------------------------------------------------------------------------------------
# Config comparison
# --------------------------------------------------------------------------------------------


def run_dir(root: str | os.PathLike, stage: str, sections: Any) -> Path:
    """`<root>/<stage>-<hash>`: the checkpoint folder of one training configuration.

    The hash covers every setting in `sections` (a nested mapping of params sections, pydantic models allowed)
    except the trainer keys a resume may change (steps, logging, launcher), so an interrupted or lengthened run
    continues in the same folder and any other change starts afresh in a new one.
    """
    kept = {k: v for k, v in flatten(jsonable(sections)).items() if not _resumable(k)}
    digest = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]
    return Path(root) / f"{stage}-{digest}"


def _resumable(key: str) -> bool:
    """`trainer.steps`, `stage.trainer.log_every`, …: trainer keys allowed to change on resume."""
    parts = key.split(".")
    return len(parts) >= 2 and parts[-2] == "trainer" and parts[-1] in RESUMABLE_KEYS


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Lines `key: old -> new` for every key that differs, ignoring the resumable trainer keys."""
    a, b = flatten(jsonable(old)), flatten(jsonable(new))
    missing = object()
    lines = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb and not _resumable(key):
            shown_a = "<absent>" if va is missing else json.dumps(va)
            shown_b = "<absent>" if vb is missing else json.dumps(vb)
            lines.append(f"{key}: {shown_a} -> {shown_b}")
    return lines


def check_config(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Raise ConfigMismatchError when `new` differs from the config stored in checkpoint `path`."""
    lines = config_diff(old, new)
    if lines:
        raise ConfigMismatchError(
            f"cannot resume from {path}: the config differs from the checkpoint's in "
            f"{len(lines)} key(s) (checkpoint -> now):\n  "
            + "\n  ".join(lines)
            + "\nRestore those values, or set trainer.resume=false (or delete the checkpoint) to start over."
        )


# --------------------------------------------------------------------------------------------
# RNG states (plain tensors and tuples, loadable with weights_only=True)
# --------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch CPU and CUDA generator states."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured (the CUDA part only where CUDA is in use)."""
    random.setstate(state["python"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning(
                "checkpoint has %d CUDA RNG states, this host %d GPUs: CUDA RNG not restored",
                len(cuda),
                torch.cuda.device_count(),
            )


# --------------------------------------------------------------------------------------------
# The checkpoint directory
# --------------------------------------------------------------------------------------------


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load one checkpoint file (weights_only); CheckpointError naming the file when it is unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad magic, disallowed pickle global, I/O error, …
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a vaflow training checkpoint (a {type(state).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a vaflow training checkpoint (missing {missing})")
    if state["format"] != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state['format']}, this code reads format {FORMAT}")
    return state


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointDir:
    """The checkpoints of one training run: `load()` the newest good one, `save()` atomically with rotation."""

    def __init__(self, directory: str | Path, keep: int = 0):
        self.dir = Path(directory)
        self.keep = keep
        # False after `load` fell back past an unreadable last.pt: the next save must not rotate that file into
        # last.pt.prev (it would replace the good copy we resumed from).
        self._last_ok = True

    @property
    def last(self) -> Path:
        return self.dir / LAST

    @property
    def prev(self) -> Path:
        return self.dir / PREV

    def exists(self) -> bool:
        return self.last.exists() or self.prev.exists()

    def load(self) -> tuple[dict[str, Any], Path] | None:
        """The newest readable checkpoint and its path, or None when there is none.

        An unreadable `last.pt` falls back to `last.pt.prev` with a warning; when no file is readable the
        CheckpointError names every file tried.
        """
        errors: list[str] = []
        for path in (self.last, self.prev):
            if not path.exists():
                continue
            try:
                state = read_checkpoint(path)
            except CheckpointError as err:
                errors.append(str(err))
                log.warning("%s", err)
                continue
            if path == self.prev:
                reason = "is unreadable" if errors else "is missing"
                log.warning(
                    "%s %s; resuming from the previous checkpoint %s (step %d)",
                    self.last,
                    reason,
                    path,
                    state["step"],
                )
                self._last_ok = not errors
            return state, path
        if errors:
            raise CheckpointError(
                "no usable checkpoint in "
                f"{self.dir}:\n  "
                + "\n  ".join(errors)
                + "\nDelete the directory (or set trainer.resume=false) to start over."
            )
        return None

    def save(self, state: dict[str, Any]) -> Path:
        """Write `state` as last.pt atomically; the old last.pt becomes last.pt.prev. Returns the path."""
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {"format": FORMAT, **state}
        fd, tmp_name = tempfile.mkstemp(prefix=f".{LAST}.", suffix=".tmp", dir=self.dir)
        tmp = Path(tmp_name)
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; checkpoints are shared like any output
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            if self.last.exists():
                if self._last_ok:
                    os.replace(self.last, self.prev)
                else:  # keep the unreadable file for inspection, never as the fallback
                    os.replace(self.last, self.dir / f"{LAST}.corrupt")
                    self._last_ok = True
            os.replace(tmp, self.last)
            _fsync_dir(self.dir)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.keep > 0:
            self._keep_copy(int(state["step"]))
        return self.last

    def _keep_copy(self, step: int) -> None:
        """Step-numbered copy of last.pt (a hard link when possible), pruned to the `keep` newest."""
        dst = self.dir / f"step-{step:08d}.pt"
        dst.unlink(missing_ok=True)
        try:
            os.link(self.last, dst)
        except OSError:  # filesystems without hard links: copy through a temp file, still atomic
            with atomic.replacing(dst) as tmp:
                shutil.copyfile(self.last, tmp)
        for old in sorted(self.dir.glob("step-*.pt"))[: -self.keep]:
            old.unlink(missing_ok=True)

    def set_aside(self) -> Path:
        """Move every checkpoint into `previous-run/` (replacing an older one): a run that starts over must
        never fall back to, or rotate in, checkpoints of the run before it."""
        aside = self.dir / "previous-run"
        shutil.rmtree(aside, ignore_errors=True)
        aside.mkdir(parents=True)
        for path in [self.last, self.prev, self.dir / f"{LAST}.corrupt", *self.dir.glob("step-*.pt")]:
            if path.exists():
                os.replace(path, aside / path.name)
        self._last_ok = True
        return aside

    def clean_temp(self) -> None:
        """Remove temp files a killed writer left behind."""
        for tmp in self.dir.glob(f".{LAST}.*.tmp"):
            tmp.unlink(missing_ok=True)


__all__ = [
    "CheckpointDir",
    "CheckpointError",
    "ConfigMismatchError",
    "check_config",
    "config_diff",
    "flatten",
    "read_checkpoint",
    "rng_state",
    "set_rng_state",
]
