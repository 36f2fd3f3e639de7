"""Batched extraction of per-clip features into shards: the one core of `encode_audio` and `extract_visual`.

In full: docs/library.md, `vaflow.data.extract`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vaflow import atomic
from vaflow.config import ClipConfig, ConfigError
from vaflow.data import shards
from vaflow.data.journal import SpecFolder
from vaflow.data.media import FFmpegNotFoundError, MediaError
from vaflow.data.prepare import DURATION_TOLERANCE

__all__ = [
    "REJECTED_FILE",
    "BatchedEncoder",
    "ClipRejected",
    "SplitSummary",
    "check_windows",
    "extract_split",
    "extract_splits",
    "extraction_spec",
    "finish_split",
    "finish_splits",
    "manifest_splits",
    "media_digest",
    "rejection_reason",
    "split_specs",
    "summary_metrics",
    "sync_spec",
]

REJECTED_FILE = "rejected.csv"
UNRECORDED = "rejected (reason not recorded)"  # a clip missing from a shard whose journal line was lost


class ClipRejected(ValueError):
    """A clip that cannot be used (decode failure, silence policy, non-finite values); the reason is the message."""


def rejection_reason(err: Exception) -> str:
    """One line for a rejected list: ffmpeg's short reason for a decode failure, the policy's message otherwise."""
    if isinstance(err, MediaError):
        return f"decode failed: {err.reason}"
    return " ".join(str(err).split())


def _is_rejection(err: Exception) -> bool:
    # A missing ffmpeg is a MediaError too, but a setup problem: rejecting every clip for it would hide it.
    return isinstance(err, MediaError | ClipRejected) and not isinstance(err, FFmpegNotFoundError)


# ----------------------------------------------------------------------------------------------------------------
# The spec of a split: which media its shards are of
# ----------------------------------------------------------------------------------------------------------------


def _file_identity(path: str) -> str:
    """size:sha256[:16] of a media file's bytes ("missing" when it cannot be read: it is rejected when encoded)."""
    try:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()[:16]
        return f"{os.path.getsize(path)}:{digest}"
    except OSError:
        return "missing"


def media_digest(rows: pd.DataFrame) -> str:
    """sha256[:16] of a split's manifest rows in order and of the bytes of each clip's media file.

    Every column but the absolute path enters (a moved tree keeps its shards); the file contents do too, because
    a regenerated synthetic world keeps its ids, windows and paths but changes the media. Contents, not mtimes:
    the digest lands in spec.json, which DVC hashes, so it must be the same for the same data on any machine.
    """
    if "path" not in rows.columns:
        raise ValueError(f"manifest rows lack a 'path' column (have {list(rows.columns)})")
    cols = [c for c in rows.columns if c != "path"]
    h = hashlib.sha256(rows[cols].to_csv(index=False).encode())
    for path in rows["path"]:
        h.update(f"{_file_identity(str(path))}\n".encode())
    return h.hexdigest()[:16]


def split_specs(splits: Mapping[str, pd.DataFrame]) -> dict[str, dict[str, Any]]:
    """The `splits` entry of an extraction spec: per split its clip count and `media_digest`."""
    return {name: {"clips": len(rows), "media": media_digest(rows)} for name, rows in splits.items()}


def manifest_splits(manifest: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Split name -> its manifest rows, both in manifest order (prepare's: by split, then id); both modalities
    extract in this one order, so a split's shards are written, and its clips listed, the same way on either side."""
    return {name: manifest[manifest["split"] == name] for name in manifest["split"].drop_duplicates()}


def check_windows(manifest: pd.DataFrame, clip: ClipConfig) -> None:
    """Every window must be clip.duration long (within prepare's tolerance): all clips give the same T_a and T_v."""
    off = manifest[(manifest["duration"] - clip.duration).abs() > DURATION_TOLERANCE]
    if len(off):
        raise ConfigError(
            f"{len(off)} manifest windows are not clip.duration={clip.duration}s long (e.g. {off['id'].iloc[0]}: "
            f"{off['duration'].iloc[0]}s): rerun the prepare stage"
        )


def extraction_spec(
    identity: Mapping[str, Any],
    payload: Mapping[str, Any],
    clip: ClipConfig,
    per_shard: int,
    splits: Mapping[str, pd.DataFrame],
    code: str,
) -> dict[str, Any]:
    """Everything a shard set depends on, for `SpecFolder.sync`: the encoder's `identity` keys (what later stages
    check a model against) and the `payload` keys (what each sample holds and the clip policy), beside the clip
    geometry, per_shard, `code` (the stage's code identity, `vaflow.code.stage_code`) and per split its clips and
    media (`splits`: name -> manifest rows in clip order)."""
    common = {"clip": clip.model_dump(mode="json"), "per_shard": per_shard, "code": code}
    clash = sorted(set(identity) & set(payload) | (set(identity) | set(payload)) & {*common, "splits"})
    if clash:
        raise ValueError(f"extraction spec keys given twice: {clash}")
    return {**identity, **payload, **common, "splits": split_specs(splits)}


# ----------------------------------------------------------------------------------------------------------------
# Writing a rank's share
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class BatchedEncoder:
    """Serves `make_sample(id)` to `shards.write_shards` while loading and encoding `batch_size` clips at a time.

    `load(id) -> input` decodes one clip (raising MediaError or ClipRejected for a bad clip); `encode(inputs) ->
    samples` runs the model on a list of inputs and returns one sample mapping per input, or a ClipRejected in
    place of a clip whose output is unusable. The writer asks for ids in shard order, so on a cache miss the next
    `batch_size` ids of the same shard are loaded and encoded together; a clip that failed is re-raised when the
    writer reaches it, and the rest of its batch is still encoded. With `workers` > 0, that many threads (each
    driving one ffmpeg process) load a batch's clips at once and the shard's next batch while the model encodes.
    """

    plan: Sequence[Sequence[str]]
    load: Callable[[str], Any]
    encode: Callable[[list[Any]], Sequence[Mapping[str, Any] | ClipRejected]]
    batch_size: int
    workers: int = 0

    def __post_init__(self) -> None:
        self._next: dict[str, list[str]] = {}  # a batch's first id -> its ids
        self._follow: dict[str, str] = {}  # a batch's first id -> the first id of the shard's next batch
        for shard_ids in self.plan:
            for i, clip_id in enumerate(shard_ids):
                self._next[clip_id] = list(shard_ids[i : i + self.batch_size])
                if i + self.batch_size < len(shard_ids):
                    self._follow[clip_id] = shard_ids[i + self.batch_size]
        self._cache: dict[str, Mapping[str, Any] | Exception] = {}
        self._pool = ThreadPoolExecutor(self.workers) if self.workers > 0 else None
        self._ahead: tuple[str, list[Future]] | None = None  # (first id, loads) of the batch decoding ahead

    def _loads(self, first: str) -> list[Future]:
        """The loads of the batch starting at `first`: taken from the decode-ahead or submitted now."""
        if self._ahead is not None and self._ahead[0] == first:
            return self._ahead[1]
        assert self._pool is not None
        return [self._pool.submit(self.load, cid) for cid in self._next[first]]

    def _load(self, batch: list[str]) -> list[Any | Exception]:
        """Each clip of `batch` loaded, or its MediaError / ClipRejected."""
        if self._pool is None:
            loaded = [_guarded(self.load, cid) for cid in batch]
        else:
            futures = self._loads(batch[0])
            follow = self._follow.get(batch[0])
            if follow is not None and follow in self._next:
                self._ahead = (follow, [self._pool.submit(self.load, cid) for cid in self._next[follow]])
            loaded = [_guarded(future.result) for future in futures]
        return loaded

    def __call__(self, clip_id: str) -> Mapping[str, Any]:
        if clip_id not in self._cache:
            self._cache.clear()  # the writer never comes back to an earlier batch
            batch = self._next[clip_id]
            inputs, good = [], []
            for bid, result in zip(batch, self._load(batch), strict=True):
                if isinstance(result, Exception):
                    self._cache[bid] = result
                else:
                    inputs.append(result)
                    good.append(bid)
            if inputs:
                self._cache.update(zip(good, self.encode(inputs), strict=True))
        result = self._cache.pop(clip_id)
        if isinstance(result, Exception):
            raise result
        return result

    def close(self) -> None:
        """Stop the decoding threads (decodes still running are waited for, those not started are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), or the MediaError / ClipRejected it raised (a bad clip); any other error propagates."""
    try:
        return fn(*args)
    except (MediaError, ClipRejected) as err:
        return err


def extract_split(
    ids: Sequence[str],
    folder: SpecFolder,
    split: str,
    name: str,
    load: Callable[[str], Any],
    encode: Callable[[list[Any]], Sequence[Mapping[str, Any] | ClipRejected]],
    batch_size: int,
    per_shard: int,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
    workers: int = 0,
) -> shards.ShardReport:
    """Encode the clips `ids` (in this order) into `<folder>/<split>/<name>-%06d.tar`; rank `rank` of `world`
    writes its share. `folder` must already hold this run's spec (`SpecFolder.sync`).

    Finished shards are skipped. A clip whose `load` raises MediaError or ClipRejected (or whose `encode` output
    is a ClipRejected) is left out, journalled with its reason as it happens (so a killed run keeps it), and
    listed in the report's `rejected`. Any other error stops the run; the unfinished shard is discarded.
    `workers` threads decode ahead of the encoder (0: one clip at a time, in this thread).
    """
    journal = folder.journal(split)
    rejected: list[tuple[str, str]] = []

    def on_error(clip_id: str, err: Exception) -> bool:
        if not _is_rejection(err):
            return False
        reason = rejection_reason(err)
        journal.reject(clip_id, reason)
        rejected.append((clip_id, reason))
        return True

    serve = BatchedEncoder(shards.shard_plan(ids, per_shard), load, encode, batch_size, workers)
    try:
        report = shards.write_shards(
            folder.root / split,
            name,
            ids,
            serve,
            per_shard=per_shard,
            rank=rank,
            world=world,
            progress=progress,
            on_error=on_error,
        )
    finally:
        serve.close()
    report.rejected = rejected  # the policy's reasons, not the exception types write_shards records
    return report


def sync_spec(folder: SpecFolder, spec: Mapping[str, Any], what: str) -> None:
    """Record `spec` in `folder`, deleting what a changed spec invalidates (`SpecFolder.sync`): one line per
    entry deleted, naming the `what` ("feature", "latent") spec."""
    cleared = folder.sync(spec)
    for entry, n in sorted(cleared.items()):  # printed by the one rank that found the spec changed
        print(f"{entry}: the {what} spec changed, {n} stale file(s) deleted")


def extract_splits(
    splits: Mapping[str, pd.DataFrame],
    folder: SpecFolder,
    name: str,
    load: Callable[[str], Any],
    encode: Callable[[list[Any]], Sequence[Mapping[str, Any] | ClipRejected]],
    batch_size: int,
    per_shard: int,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
) -> None:
    """`extract_split` of each split in turn (`splits`: name -> manifest rows in clip order), one line per split;
    a progress bar only on a terminal."""
    for split, rows in splits.items():
        report = extract_split(rows["id"].tolist(), folder, split, name, load, encode, batch_size, per_shard,
                               rank, world, progress=sys.stderr.isatty(), workers=workers)  # fmt: skip
        print(f"{split}: rank {rank}/{world} wrote {len(report.written)} shard(s) ({report.n_samples} clips), "
              f"skipped {len(report.skipped)} finished")  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Summing up a split once every rank is done
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitSummary:
    """A finished split: its clips, the clips its shards hold, its shard count and its rejected list."""

    split: str
    clips: int
    encoded: int
    shards: int
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (id, reason), in clip order

    def reason_counts(self) -> dict[str, int]:
        """Rejections per kind of reason (the text before the first ':' or '(')."""
        counts: dict[str, int] = {}
        for _, reason in self.rejected:
            key = reason.split(":")[0].split("(")[0].strip()
            counts[key] = counts.get(key, 0) + 1
        return counts

    def line(self) -> str:
        """One line for the stage's log."""
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self.reason_counts().items()))
        return (
            f"{self.split}: {self.encoded} clips in {self.shards} shards, {len(self.rejected)} rejected"
            + (f" ({kinds})" if kinds else "")
        )


def _read_rejected(path: Path) -> dict[str, str]:
    """id -> reason of an existing rejected.csv (the reasons of shards finished by an earlier, folded run)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return {row["id"]: row["reason"] for row in csv.DictReader(f)}
    except (OSError, KeyError, csv.Error):
        return {}


def finish_split(
    folder: SpecFolder, split: str, name: str, ids: Sequence[str], per_shard: int
) -> SplitSummary:
    """Check that every planned shard of `<folder>/<split>` is finished, write its `rejected.csv` (every clip of
    `ids` missing from the shards, with the reason the journal or an earlier rejected.csv gives) and fold the
    journal into it; shards beyond the plan and temporary files of killed runs are deleted.

    Call it once every rank has finished its share: RuntimeError names the shards still missing otherwise.
    """
    split_dir = folder.root / split
    planned = len(shards.shard_plan(ids, per_shard))
    with folder.locked():
        paths = shards.shard_paths(split_dir, name)
        expected = {f"{name}-{i:06d}.tar" for i in range(planned)}
        missing = sorted(expected - {p.name for p in paths})
        if missing:
            raise RuntimeError(
                f"{split_dir}: {len(missing)} of {planned} shards are not finished (e.g. {missing[0]}): a rank "
                "stopped early or is still running; rerun the stage to complete them"
            )
        present: set[str] = set()
        for path in paths:
            if path.name in expected:
                present.update(shards.member_keys(str(path)))
            else:
                path.unlink()  # not planned for these ids (written by hand or by another plan)
        journal = folder.journal(split)
        reasons = {**_read_rejected(split_dir / REJECTED_FILE), **journal.read().rejected}
        rejected = [(i, reasons.get(i, UNRECORDED)) for i in ids if shards.sanitize_key(i) not in present]
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["id", "reason"])
        writer.writerows(rejected)
        atomic.write_text(split_dir / REJECTED_FILE, text.getvalue())
        journal.remove()
        for leftover in split_dir.glob("*.tmp*"):
            leftover.unlink(missing_ok=True)  # every rank is done: no temporary file is still being written
    return SplitSummary(split, len(ids), len(ids) - len(rejected), planned, rejected)


def finish_splits(
    folder: SpecFolder, splits: Mapping[str, pd.DataFrame], name: str, per_shard: int
) -> list[SplitSummary]:
    """`finish_split` of each split (once every rank is done), printing each summary and rejected clip."""
    summaries = [finish_split(folder, s, name, rows["id"].tolist(), per_shard) for s, rows in splits.items()]
    for summary in summaries:
        print(summary.line())
        for clip_id, reason in summary.rejected:
            print(f"  rejected {clip_id}: {reason}")
    return summaries


def summary_metrics(summaries: Sequence[SplitSummary]) -> dict[str, int]:
    """The stage's metrics: clips, encoded, rejected and shards in total, and encoded/rejected per split."""
    out = {
        "clips": sum(s.clips for s in summaries),
        "encoded": sum(s.encoded for s in summaries),
        "rejected": sum(len(s.rejected) for s in summaries),
        "shards": sum(s.shards for s in summaries),
    }
    for s in summaries:
        out[f"encoded_{s.split}"] = s.encoded
        out[f"rejected_{s.split}"] = len(s.rejected)
    return out
