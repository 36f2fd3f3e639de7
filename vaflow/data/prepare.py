"""Checking listed clips: every file is probed (and decoded once) and lands in the manifest or the rejected list.

Usable clips are not transcoded: later stages decode through `vaflow.data.media`, which resamples, down-mixes
and resizes on the fly, so the manifest only records the window (start, duration) each clip contributes and what
the probe found. Odd rates, sizes, channel counts and variable frame rates are therefore used, not rejected.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from vaflow import atomic
from vaflow.config import ClipConfig, PrepareConfig
from vaflow.data import media, parallel
from vaflow.data.journal import Entries, SpecFolder
from vaflow.data.sources import SourceItem

MANIFEST_COLUMNS = [
    "id",
    "source",  # the name in `prepare.sources` that listed the clip: a stage reading some sources filters on it
    "split",
    "label",
    "path",
    "start",
    "duration",
    "media_duration",
    "fps",
    "width",
    "height",
    "sample_rate",
    "channels",
    "status",
]
# What the check of a file finds (the rest of a manifest row comes from the listing): what the journal keeps.
MEDIA_FACTS = ["media_duration", "fps", "width", "height", "sample_rate", "channels"]
REJECTED_COLUMNS = ["id", "source", "path", "reason"]
# A clip may fall short of the window by this much (container rounding, AAC priming) and still be used.
DURATION_TOLERANCE = 0.05
# Part of every journal key: raise it when `check_item` judges a file differently, so that old verdicts lapse.
CHECK_VERSION = 1


@dataclass(frozen=True)
class PrepareReport:
    """What `prepare` wrote: manifest and rejected tables and their paths, and how many files were checked
    (the rest were taken from the journal of an earlier run)."""

    manifest: pd.DataFrame
    rejected: pd.DataFrame
    manifest_path: Path
    rejected_path: Path
    checked: int = 0
    resumed: int = 0

    def summary(self) -> str:
        """One line per split and source plus the rejection reasons, for the stage's log."""
        lines = [f"{len(self.manifest)} usable clips, {len(self.rejected)} rejected"]
        if self.resumed:
            lines[0] += f" ({self.resumed} files' checks taken from the journal, {self.checked} checked now)"
        for split, n in self.manifest["split"].value_counts().sort_index().items():
            lines.append(f"  {split}: {n}")
        if self.manifest["source"].nunique() > 1:
            for (source, split), n in self.manifest.groupby(["source", "split"]).size().items():
                lines.append(f"  {source} {split}: {n}")
        if len(self.rejected):
            kinds = self.rejected["reason"].str.split(":").str[0].value_counts()
            lines += [f"  rejected ({reason}): {n}" for reason, n in kinds.items()]
        return "\n".join(lines)


def _rejection(item: SourceItem, reason: str) -> dict:
    return {"id": item.id, "source": item.source, "path": item.path, "reason": reason}


def _row(item: SourceItem, clip: ClipConfig, facts: dict) -> dict:
    """The manifest row of a usable clip: the listing's fields plus what its check found."""
    return {
        "id": item.id,
        "source": item.source,
        "split": item.split,
        "label": item.label,
        "path": item.path,
        "start": item.start,
        "duration": clip.duration,
        **{key: facts[key] for key in MEDIA_FACTS},
        "status": "ok",
    }


def check_item(item: SourceItem, clip: ClipConfig, cfg: PrepareConfig) -> dict:
    """Probe (and with `verify: decode`, fully decode) one clip; returns a manifest row or a rejection row.

    `verify: decode` rejects a clip whose decoders fail, whose data ends before its index says, or whose decoded
    video or audio ends before the clip's window does; ffmpeg's log lines alone reject nothing. Raises
    FFmpegNotFoundError (a missing or too old ffmpeg is no reason to reject a clip).
    """
    if item.problem:
        return _rejection(item, item.problem)
    try:
        info = media.probe(item.path, timeout=cfg.timeout)
    except media.FFmpegNotFoundError:
        raise
    except media.MediaError as err:
        return _rejection(item, f"unreadable: {err.reason}")
    if not info.has_video:
        return _rejection(item, "no video stream")
    if not info.has_audio:
        return _rejection(item, "no audio stream")
    need = item.start + clip.duration
    if info.duration is None or info.duration < need - DURATION_TOLERANCE:
        have = "unknown" if info.duration is None else f"{info.duration:.2f}s"
        return _rejection(item, f"too short: {have} < {need:.2f}s")
    if cfg.verify == "decode":
        try:
            decoded = media.verify_decode(item.path, timeout=cfg.timeout)
        except media.FFmpegNotFoundError:
            raise  # the setup, not this clip: rejecting every clip for it would hide it
        except media.MediaError as err:
            return _rejection(item, f"decode failed: {err.reason}")
        # Judged by what decodes: the container's duration may promise more than a stream holds.
        ends = (("video", decoded.video_end), ("audio", decoded.audio_end))
        short = [
            f"{kind} decodes to {end or 0:.2f}s"
            for kind, end in ends
            if (end or 0) < need - DURATION_TOLERANCE
        ]
        if short:
            return _rejection(item, f"too short: {', '.join(short)} < {need:.2f}s")
    stream = info.audio[0]
    facts = {
        "media_duration": info.duration,
        "fps": info.fps,
        "width": info.width,
        "height": info.height,
        "sample_rate": stream.sample_rate,
        "channels": stream.channels,
    }
    return _row(item, clip, facts)


def check_key(item: SourceItem, clip: ClipConfig, cfg: PrepareConfig) -> str | None:
    """The journal key of one clip's check: the file's identity (path, size, modification time) and everything
    the verdict depends on (window, verify mode, timeout). None for a clip with nothing to check (its listing
    already rejects it, or its file cannot be read): such a check costs nothing, so it is not journalled."""
    if item.problem:
        return None
    try:
        stat = os.stat(item.path)
    except OSError:
        return None
    identity = [
        CHECK_VERSION,
        os.path.realpath(item.path),
        stat.st_size,
        stat.st_mtime_ns,
        item.start,
        clip.duration,
        cfg.verify,
        cfg.timeout,
    ]
    return hashlib.sha1(json.dumps(identity).encode()).hexdigest()


def _relative_to(path: str, base: Path) -> str:
    """`path` relative to `base` when inside it (keeps the output folder movable), else absolute."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(base.resolve()))
    except ValueError:
        return str(p)


def _first_listings(items: Iterable[SourceItem]) -> tuple[list[SourceItem], list[dict]]:
    """The items to check (each id's first listing) and the rejections of the later listings of an id."""
    first: dict[str, SourceItem] = {}
    rejected: list[dict] = []
    for item in items:
        earlier = first.get(item.id)
        if earlier is None:
            first[item.id] = item
        elif earlier.source == item.source:
            rejected.append(_rejection(item, "duplicate id"))
        else:
            reason = f"duplicate id: also listed by source '{earlier.source}' ({earlier.path})"
            rejected.append(_rejection(item, reason))
    return list(first.values()), rejected


def prepare(
    items: Iterable[SourceItem],
    clip: ClipConfig,
    cfg: PrepareConfig,
    out_dir: Path,
    progress: bool = True,
    journal_dir: Path | None = None,
) -> PrepareReport:
    """Check every listed clip and write `manifest.csv` and `rejected.csv` into `out_dir`.

    Duplicate ids keep their first listing (across sources, too: the later source's is rejected, naming both).
    Both tables are written only once every clip is checked, each through a temporary file and a rename, so an
    interrupted run leaves no partial table. With `journal_dir`, every verdict is appended to the journal there
    as it comes, and a verdict already journalled for the same file and settings (`check_key`) is reused: a run
    killed at clip 180,000 resumes there, and its tables equal those of an uninterrupted run.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo, rejected = _first_listings(items)
    journal = None if journal_dir is None else SpecFolder(journal_dir).journal()
    known = Entries() if journal is None else journal.read()
    keys = [check_key(item, clip, cfg) for item in todo]
    results: list[dict | None] = [None] * len(todo)
    for n, (item, key) in enumerate(zip(todo, keys, strict=True)):
        if key in known.done:
            results[n] = _row(item, clip, known.done[key])
        elif key in known.rejected:
            results[n] = _rejection(item, known.rejected[key])
    resumed = sum(r is not None for r in results)
    left = [n for n, r in enumerate(results) if r is None]
    workers = cfg.workers or os.cpu_count() or 1
    done = parallel.as_finished(lambda n: check_item(todo[n], clip, cfg), left, workers)
    for k, row in tqdm(done, total=len(left), desc="prepare", unit="clip", disable=not progress):
        n = left[k]
        results[n] = row
        if journal is not None and keys[n] is not None:
            if "reason" in row:
                journal.reject(keys[n], row["reason"])
            else:
                journal.done(keys[n], {key: row[key] for key in MEDIA_FACTS})
    rows = [r for r in results if r is not None and "reason" not in r]
    rejected += [r for r in results if r is not None and "reason" in r]
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    if len(manifest):
        manifest["path"] = [_relative_to(p, out_dir) for p in manifest["path"]]
    manifest = manifest.sort_values(["split", "id"], kind="stable").reset_index(drop=True)
    rejected_df = pd.DataFrame(rejected, columns=REJECTED_COLUMNS)
    manifest_path, rejected_path = out_dir / "manifest.csv", out_dir / "rejected.csv"
    atomic.write_text(rejected_path, rejected_df.to_csv(index=False))
    atomic.write_text(manifest_path, manifest.to_csv(index=False))
    if journal is not None:
        journal.keep({key for key in keys if key is not None})  # verdicts of files since changed go
    return PrepareReport(manifest, rejected_df, manifest_path, rejected_path, len(left), resumed)


def source_ids(prepared: str | Path, sources: Sequence[str]) -> set[str] | None:
    """The ids of the clips of `sources` in `<prepared>/manifest.csv` (every split); None for `[]` (every clip)."""
    if not sources:
        return None
    manifest = load_manifest(Path(prepared) / "manifest.csv")
    return set(manifest.loc[manifest["source"].isin(list(sources)), "id"])


def load_manifest(path: str | Path, split: str | None = None) -> pd.DataFrame:
    """The manifest at `path` with absolute media paths, optionally one split, in manifest order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path} (run the prepare stage: dvc repro prepare)")
    frame = pd.read_csv(path, dtype={"id": str, "label": str, "split": str}, keep_default_na=False)
    missing = set(MANIFEST_COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    frame["path"] = [str((path.parent / p).resolve()) for p in frame["path"]]
    if split is not None:
        frame = frame[frame["split"] == split].reset_index(drop=True)
    return frame
