"""Sources behind one interface: each lists clips (id, split, label, media path, window start).

A source only *lists*; `vaflow.data.prepare` probes and checks what it lists. Sources never download
implicitly: VGGSound fetches missing windows with yt-dlp only when `download: true` is asked for.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from vaflow.config import SPLITS, AudioSetV2ASource, FolderSource, Params, SynthConfig, VGGSoundSource
from vaflow.data import parallel
from vaflow.errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
# Audio-only files in a video folder are listed too, so that they are reported as rejected rather than ignored.
MEDIA_EXTENSIONS = (*VIDEO_EXTENSIONS, ".m4a", ".mp3", ".wav", ".flac", ".ogg", ".opus")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
MAX_ID_LENGTH = 120


class SourceError(ValueError, UserError):
    """A source that cannot be listed at all (missing CSV, bad columns); single bad clips are rejected instead."""


@dataclass(frozen=True)
class SourceItem:
    """One clip as a source lists it; `problem` is set when the source already knows it is unusable."""

    id: str
    split: str
    label: str
    path: str
    start: float = 0.0
    problem: str | None = None
    raw_id: str = ""
    extra: dict = field(default_factory=dict)
    source: str = ""  # the name in `prepare.sources` that listed it


def sanitize_id(raw: str) -> str:
    """A clip id safe as a file name and a webdataset key: only `[A-Za-z0-9_-]`, no dots, no path traversal.

    Accents are folded to ASCII (`é` → `e`), other unsafe characters become `_`, and overly long ids keep a
    prefix plus a hash so they stay unique.
    """
    folded = unicodedata.normalize("NFKD", raw.strip()).encode("ascii", "ignore").decode()
    text = _UNSAFE.sub("_", folded).strip("_-")
    if not text:
        raise SourceError(f"clip id {raw!r} has no usable characters")
    if len(text) > MAX_ID_LENGTH:
        digest = hashlib.sha1(raw.encode()).hexdigest()[:10]
        text = f"{text[: MAX_ID_LENGTH - 11]}_{digest}"
    return text


def _hash_split(clip_id: str, test_fraction: float) -> str:
    """Deterministic train/test assignment from the id alone (stable when clips are added)."""
    bucket = int(hashlib.sha1(clip_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if bucket < test_fraction else "train"


def _read_csv(path: Path, what: str) -> list[dict[str, str]]:
    if not path.is_file():
        raise SourceError(f"{what} not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------
# synth
# --------------------------------------------------------------------------------------------


def synth_items(cfg: SynthConfig, out_dir: Path, progress: bool = True) -> Iterator[SourceItem]:
    """Generate (or resume) the synthetic world in `out_dir` and list its clips."""
    from vaflow.data import synth  # rendering pulls in heavier code than listing needs

    index = synth.generate(cfg, out_dir, progress=progress)
    for row in index.itertuples():
        yield SourceItem(
            id=row.id,
            split=row.split,
            label=row.label,
            path=str(out_dir / row.path),
            raw_id=row.id,
            source="synth",
        )


# --------------------------------------------------------------------------------------------
# folder
# --------------------------------------------------------------------------------------------


def folder_items(cfg: FolderSource) -> Iterator[SourceItem]:
    """Every video under `cfg.root`; labels and splits from `cfg.labels_csv` when given.

    Without a labels CSV the label is the parent directory's name and the split is drawn from the id's hash.
    With one, only the files it lists are used (a listed file that does not exist is rejected).
    """
    if not cfg.root:
        raise SourceError("prepare.folder.root is empty: set it to the directory of your videos")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise SourceError(f"prepare.folder.root is not a directory: {root}")
    if cfg.labels_csv:
        rows = _read_csv(Path(cfg.labels_csv).expanduser(), "prepare.folder.labels_csv")
        missing = {"file", "label"} - set(rows[0] if rows else {})
        if missing:
            raise SourceError(
                f"{cfg.labels_csv}: missing column(s) {sorted(missing)}; expected file,label[,split]"
            )
        for row in rows:
            rel = row["file"]
            clip_id = sanitize_id(str(Path(rel).with_suffix("")))
            split = row.get("split") or _hash_split(clip_id, cfg.test_fraction)
            path = root / rel
            problem = None if path.is_file() else "missing file"
            if split not in SPLITS:
                problem = f"unknown split {split!r} (valid: {', '.join(SPLITS)})"
            yield SourceItem(
                clip_id, split, row["label"], str(path), problem=problem, raw_id=rel, source="folder"
            )
        return
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in MEDIA_EXTENSIONS or not path.is_file():
            continue
        rel = path.relative_to(root)
        clip_id = sanitize_id(str(rel.with_suffix("")))
        label = rel.parent.name if rel.parent != Path(".") else ""
        split = _hash_split(clip_id, cfg.test_fraction)
        yield SourceItem(clip_id, split, label, str(path), raw_id=str(rel), source="folder")


# --------------------------------------------------------------------------------------------
# vggsound
# --------------------------------------------------------------------------------------------

VGGSOUND_WINDOW = 10.0  # seconds per VGGSound clip


def _vggsound_rows(path: Path) -> list[tuple[str, int, str, str]]:
    """The official CSV: `ytid,start,label,split` with no header (a header line is tolerated)."""
    if not path.is_file():
        raise SourceError(f"prepare.vggsound.csv not found: {path}")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for n, rec in enumerate(csv.reader(f), 1):
            if not rec or (n == 1 and (len(rec) < 2 or not rec[1].strip().isdigit())):
                continue
            if len(rec) < 4:
                raise SourceError(f"{path}:{n}: expected ytid,start,label,split, got {rec}")
            rows.append((rec[0].strip(), int(rec[1]), rec[2].strip(), rec[3].strip()))
    return rows


def _vggsound_file(video_dir: Path, ytid: str, start: int) -> tuple[Path, float]:
    """The local file of one window and the window's start inside it (0 for pre-cut clips)."""
    for name in (f"{ytid}_{start:06d}.mp4", f"{ytid}_{start}.mp4"):
        if (video_dir / name).is_file():
            return video_dir / name, 0.0
    full = video_dir / f"{ytid}.mp4"
    if full.is_file():
        return full, float(start)
    return video_dir / f"{ytid}_{start:06d}.mp4", 0.0


def download_window(
    ytid: str, start: float, duration: float, out: Path, timeout: float = 300.0
) -> str | None:
    """Fetch one window of a YouTube video with the `yt-dlp` on PATH; returns None or the failure reason."""
    exe = shutil.which("yt-dlp")
    if exe is None:
        return "yt-dlp not found on PATH (pip install yt-dlp)"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.part.mp4")
    cmd = [
        exe,
        "--quiet",
        "--no-playlist",
        "--download-sections",
        f"*{start:g}-{start + duration:g}",
        "--force-keyframes-at-cuts",
        "-f",
        "bv*[ext=mp4]+ba[ext=m4a]/b[ext=mp4]/b",
        "--merge-output-format",
        "mp4",
        "-o",
        str(tmp),
        f"https://www.youtube.com/watch?v={ytid}",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        return f"yt-dlp timed out after {timeout:g}s"
    if proc.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"yt-dlp failed (exit {proc.returncode}): {tail[0]}"
    os.replace(tmp, out)
    return None


# yt-dlp's messages for a video that is gone for good: retrying these only spends the rate limit.
_GONE = re.compile(
    r"video unavailable|private video|has been removed|account .*terminated|copyright|yt-dlp not found",
    re.IGNORECASE,
)


def vggsound_items(
    cfg: VGGSoundSource, progress: bool = True, fetch: Callable[..., str | None] = download_window
) -> Iterator[SourceItem]:
    """VGGSound windows from the official CSV and a local directory (optionally downloading missing ones).

    With `cfg.download`, the missing windows are fetched by `fetch(ytid, start, duration, out)` (yt-dlp; a fake in
    tests), `cfg.download_workers` at a time, at most `cfg.download_rate` started per second, each retried
    `cfg.download_retries` times with exponential backoff unless the video is gone; a window that still fails is
    listed with the reason, so that it lands in the rejected list.
    """
    if not cfg.video_dir:
        raise SourceError("prepare.vggsound.video_dir is empty: set it to the directory of the videos")
    video_dir = Path(cfg.video_dir).expanduser()
    taken: dict[str, int] = {}
    items: list[SourceItem] = []
    for ytid, start, label, split in _vggsound_rows(Path(cfg.csv).expanduser()):
        if cfg.limit and taken.get(split, 0) >= cfg.limit:
            continue
        taken[split] = taken.get(split, 0) + 1
        raw = f"{ytid}_{start:06d}"
        path, offset = _vggsound_file(video_dir, ytid, start)
        problem = None if path.is_file() else "missing file"
        if split not in SPLITS:
            problem = f"unknown split {split!r} (valid: {', '.join(SPLITS)})"
        items.append(
            SourceItem(
                sanitize_id(raw),
                split,
                label,
                str(path),
                offset,
                problem,
                raw,
                extra={"ytid": ytid, "window_start": start},
                source="vggsound",
            )
        )
    if cfg.download:
        _download_missing(items, cfg, progress, fetch)
    yield from items


def _download_missing(
    items: list[SourceItem], cfg: VGGSoundSource, progress: bool, fetch: Callable[..., str | None]
) -> None:
    """Fetch the windows of `items` listed as missing files, in place: each becomes usable or carries the reason."""
    missing = [n for n, item in enumerate(items) if item.problem == "missing file"]
    limiter = parallel.RateLimiter(cfg.download_rate)

    def download(n: int) -> str | None:
        item = items[n]
        ytid, start = item.extra["ytid"], item.extra["window_start"]
        return parallel.with_retries(
            lambda: fetch(ytid, start, VGGSOUND_WINDOW, Path(item.path)),
            retries=cfg.download_retries,
            backoff=cfg.download_backoff,
            limiter=limiter,
            permanent=lambda reason: bool(_GONE.search(reason)),
        )

    done = parallel.as_finished(download, missing, cfg.download_workers)
    for k, reason in tqdm(done, total=len(missing), desc="download", unit="clip", disable=not progress):
        n = missing[k]
        items[n] = dataclasses.replace(items[n], problem=reason and f"download failed: {reason}")


# --------------------------------------------------------------------------------------------
# audioset_v2a
# --------------------------------------------------------------------------------------------


def audioset_v2a_items(cfg: AudioSetV2ASource) -> Iterator[SourceItem]:
    """AudioSet-V2A: one id per line (`<ytid>_<start>` or `<ytid>`), videos `<id>.mp4` in `video_dir`."""
    ids_path = Path(cfg.ids).expanduser()
    if not ids_path.is_file():
        raise SourceError(f"prepare.audioset_v2a.ids not found: {ids_path}")
    if not cfg.video_dir:
        raise SourceError("prepare.audioset_v2a.video_dir is empty: set it to the directory of the videos")
    video_dir = Path(cfg.video_dir).expanduser()
    lines = [ln.strip() for ln in ids_path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if cfg.limit:
        lines = lines[: cfg.limit]
    for raw in lines:
        path = video_dir / f"{raw}.mp4"
        problem = None if path.is_file() else "missing file"
        yield SourceItem(
            sanitize_id(raw), cfg.split, "", str(path), problem=problem, raw_id=raw, source="audioset_v2a"
        )


def list_items(params: Params, work_dir: Path, progress: bool = True) -> Iterator[SourceItem]:
    """The clips of every source in `params.prepare.sources`, in that order, each tagged with its source's name;
    synthetic media are written under `work_dir`."""
    prep = params.prepare
    listers: dict[str, Callable[[], Iterator[SourceItem]]] = {
        "synth": lambda: synth_items(params.synth, work_dir / "synth", progress),
        "folder": lambda: folder_items(prep.folder),
        "vggsound": lambda: vggsound_items(prep.vggsound, progress),
        "audioset_v2a": lambda: audioset_v2a_items(prep.audioset_v2a),
    }
    for name in prep.sources:
        yield from listers[name]()
