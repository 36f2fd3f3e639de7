"""Checking listed clips: every file is probed (and decoded once) and lands in the manifest or the rejected list.

Usable clips are not transcoded: later stages decode through `vaflow.data.media`, which resamples, down-mixes
and resizes on the fly, so the manifest only records the window (start, duration) each clip contributes and what
the probe found. Odd rates, sizes, channel counts and variable frame rates are therefore used, not rejected.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from vaflow import atomic
from vaflow.config import ClipConfig, PrepareConfig
from vaflow.data import media
from vaflow.data.sources import SourceItem

MANIFEST_COLUMNS = [
    "id",
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
REJECTED_COLUMNS = ["id", "path", "reason"]
# A clip may fall short of the window by this much (container rounding, AAC priming) and still be used.
DURATION_TOLERANCE = 0.05


@dataclass(frozen=True)
class PrepareReport:
    """What `prepare` wrote: manifest and rejected tables and their paths."""

    manifest: pd.DataFrame
    rejected: pd.DataFrame
    manifest_path: Path
    rejected_path: Path

    def summary(self) -> str:
        """One line per split plus the rejection reasons, for the stage's log."""
        lines = [f"{len(self.manifest)} usable clips, {len(self.rejected)} rejected"]
        for split, n in self.manifest["split"].value_counts().sort_index().items():
            lines.append(f"  {split}: {n}")
        if len(self.rejected):
            kinds = self.rejected["reason"].str.split(":").str[0].value_counts()
            lines += [f"  rejected ({reason}): {n}" for reason, n in kinds.items()]
        return "\n".join(lines)


def check_item(item: SourceItem, clip: ClipConfig, cfg: PrepareConfig) -> dict:
    """Probe (and with `verify: decode`, fully decode) one clip; returns a manifest row or a rejection row.

    `verify: decode` rejects a clip whose decoders fail, whose data ends before its index says, or whose decoded
    video or audio ends before the clip's window does; ffmpeg's log lines alone reject nothing. Raises
    FFmpegNotFoundError (a missing or too old ffmpeg is no reason to reject a clip).
    """
    if item.problem:
        return {"id": item.id, "path": item.path, "reason": item.problem}
    try:
        info = media.probe(item.path, timeout=cfg.timeout)
    except media.FFmpegNotFoundError:
        raise
    except media.MediaError as err:
        return {"id": item.id, "path": item.path, "reason": f"unreadable: {err.reason}"}
    if not info.has_video:
        return {"id": item.id, "path": item.path, "reason": "no video stream"}
    if not info.has_audio:
        return {"id": item.id, "path": item.path, "reason": "no audio stream"}
    need = item.start + clip.duration
    if info.duration is None or info.duration < need - DURATION_TOLERANCE:
        have = "unknown" if info.duration is None else f"{info.duration:.2f}s"
        return {"id": item.id, "path": item.path, "reason": f"too short: {have} < {need:.2f}s"}
    if cfg.verify == "decode":
        try:
            decoded = media.verify_decode(item.path, timeout=cfg.timeout)
        except media.FFmpegNotFoundError:
            raise  # the setup, not this clip: rejecting every clip for it would hide it
        except media.MediaError as err:
            return {"id": item.id, "path": item.path, "reason": f"decode failed: {err.reason}"}
        # Judged by what decodes: the container's duration may promise more than a stream holds.
        ends = (("video", decoded.video_end), ("audio", decoded.audio_end))
        short = [
            f"{kind} decodes to {end or 0:.2f}s"
            for kind, end in ends
            if (end or 0) < need - DURATION_TOLERANCE
        ]
        if short:
            return {
                "id": item.id,
                "path": item.path,
                "reason": f"too short: {', '.join(short)} < {need:.2f}s",
            }
    stream = info.audio[0]
    return {
        "id": item.id,
        "split": item.split,
        "label": item.label,
        "path": item.path,
        "start": item.start,
        "duration": clip.duration,
        "media_duration": info.duration,
        "fps": info.fps,
        "width": info.width,
        "height": info.height,
        "sample_rate": stream.sample_rate,
        "channels": stream.channels,
        "status": "ok",
    }


def _relative_to(path: str, base: Path) -> str:
    """`path` relative to `base` when inside it (keeps the output folder movable), else absolute."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(base.resolve()))
    except ValueError:
        return str(p)


def prepare(
    items: Iterable[SourceItem],
    clip: ClipConfig,
    cfg: PrepareConfig,
    out_dir: Path,
    progress: bool = True,
) -> PrepareReport:
    """Check every listed clip and write `manifest.csv` and `rejected.csv` into `out_dir`.

    Duplicate ids keep their first occurrence. Both tables are written only once every clip is checked,
    each through a temporary file and a rename, so an interrupted run leaves no partial table.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    todo: list[SourceItem] = []
    rejected: list[dict] = []
    for item in items:
        if item.id in seen:
            rejected.append({"id": item.id, "path": item.path, "reason": "duplicate id"})
            continue
        seen.add(item.id)
        todo.append(item)
    workers = cfg.workers or os.cpu_count() or 1
    rows: list[dict] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda it: check_item(it, clip, cfg), todo)
        for row in tqdm(results, total=len(todo), desc="prepare", unit="clip", disable=not progress):
            (rejected if "reason" in row else rows).append(row)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    if len(manifest):
        manifest["path"] = [_relative_to(p, out_dir) for p in manifest["path"]]
    manifest = manifest.sort_values(["split", "id"], kind="stable").reset_index(drop=True)
    rejected_df = pd.DataFrame(rejected, columns=REJECTED_COLUMNS)
    manifest_path, rejected_path = out_dir / "manifest.csv", out_dir / "rejected.csv"
    atomic.write_text(rejected_path, rejected_df.to_csv(index=False))
    atomic.write_text(manifest_path, manifest.to_csv(index=False))
    return PrepareReport(manifest, rejected_df, manifest_path, rejected_path)


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
