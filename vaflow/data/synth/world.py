"""One clip of the synthetic world and the whole world on disk (vaflow.data.synth)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from vaflow import atomic
from vaflow.config import SPLITS, SynthConfig
from vaflow.data import media
from vaflow.data.synth.classes import CLASSES, _distractors
from vaflow.data.synth.scene import NOISE_FLOOR, PEAK, _Scene, _Slot

# --------------------------------------------------------------------------------------------
# One clip
# --------------------------------------------------------------------------------------------


@dataclass
class SynthClip:
    """A rendered clip: frames (T, H, W, 3) uint8 at cfg.fps, audio (N,) float32 at cfg.sample_rate, ground truth."""

    id: str
    label: str
    frames: np.ndarray
    audio: np.ndarray
    truth: dict[str, Any]


def clip_id(split: str, index: int) -> str:
    """`synth_<split>_<index:06d>`: no dots or slashes, so it is a valid shard key and file stem."""
    return f"synth_{split}_{index:06d}"


def _hash_seed(*parts: Any) -> int:
    """A 64-bit seed from a stable hash (Python's hash() is salted per process)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def clip_label(cfg: SynthConfig, split: str, index: int) -> str:
    """The main class of a clip: each block of len(CLASSES) consecutive indices is a shuffle of all classes,
    so every split is balanced and indices 0..len(CLASSES)-1 cover every class once."""
    names = list(CLASSES)
    block, pos = divmod(index, len(names))
    order = np.random.default_rng(_hash_seed("label", cfg.seed, split, block)).permutation(len(names))
    return names[order[pos]]


def render_clip(cfg: SynthConfig, split: str, index: int, floor_draw: int = 0) -> SynthClip:
    """Render clip `index` of `split`; deterministic in (cfg.seed, split, index) and the rest of `cfg`.

    Returns frames (T, H, W, 3) uint8 with T = round(duration·fps), H = W = cfg.size, audio (N,) float32 with
    N = round(duration·sample_rate) and peak ≤ 0.9, and the ground-truth dict written as `truth/<id>.json`.
    `floor_draw` k > 0 renders the clip's twin whose white noise floor is another draw (k-th), all else the same:
    what no codec that cannot store noise samples can tell apart (benchmarks/mel_floor.py).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; valid: {list(SPLITS)}")
    if index < 0:
        raise ValueError(f"clip index must be ≥ 0, got {index}")
    cid = clip_id(split, index)
    label = clip_label(cfg, split, index)
    # Independent streams, so e.g. toggling distractors does not change how the objects move.
    choose, background, noise, *objects = (
        np.random.default_rng(s)
        for s in np.random.SeedSequence(_hash_seed("clip", cfg.seed, split, index)).spawn(5)
    )
    classes = [label]
    if choose.random() < cfg.second_object_p:
        classes.append(str(choose.choice([n for n in CLASSES if n != label])))
    with_distractors = choose.random() < cfg.distractor_p
    s, half = cfg.size, cfg.size // 2  # whole-pixel halves: objects are cut exactly at the border
    if len(classes) == 1:
        slots = [_Slot(0, 0, s, s)]
    else:
        slots = [_Slot(0, 0, half, s), _Slot(half, 0, s, s)]
        if choose.random() < 0.5:
            slots.reverse()

    scene = _Scene.new(cfg)
    if with_distractors:
        _distractors(scene, background)
    if floor_draw:
        noise = np.random.default_rng(_hash_seed("floor", cfg.seed, split, index, floor_draw))
    audio = noise.normal(0, NOISE_FLOOR, scene.n_samples)
    events: list[dict[str, Any]] = []
    curves: dict[str, dict[str, Any]] = {}
    for name, slot, rng in zip(classes, slots, objects, strict=False):
        cls = CLASSES[name]
        track = cls.render(scene, slot, rng)
        audio += track.audio
        events += [{"class": name, "time": round(float(t), 6)} for t in track.events]
        if track.curve is not None:
            values = [round(float(v), 4) for v in track.curve]
            curves[name] = {"fps": cfg.fps, "param": cls.param, "values": values}
    peak = float(np.abs(audio).max())
    if peak > PEAK:
        audio *= PEAK / peak
    events.sort(key=lambda e: (e["time"], e["class"]))

    truth = {
        "id": cid,
        "label": label,
        "split": split,
        "index": index,
        "classes": classes,
        "events": events,
        "curves": curves,
        "duration": cfg.duration,
        "fps": cfg.fps,
        "sample_rate": cfg.sample_rate,
        "size": cfg.size,
        "seed": cfg.seed,
    }
    frames = np.clip(scene.canvas + 0.5, 0, 255).astype(np.uint8)
    return SynthClip(cid, label, frames, audio.astype(np.float32), truth)


# --------------------------------------------------------------------------------------------
# The whole world on disk
# --------------------------------------------------------------------------------------------

INDEX_COLUMNS = ["id", "split", "label", "path", "duration", "fps", "sample_rate"]


def _media_path(out_dir: Path, cid: str) -> Path:
    return out_dir / "media" / f"{cid}.mp4"


def _truth_path(out_dir: Path, cid: str) -> Path:
    return out_dir / "truth" / f"{cid}.json"


def _index_row(truth: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": truth["id"],
        "split": truth["split"],
        "label": truth["label"],
        "path": f"media/{truth['id']}.mp4",
        "duration": truth["duration"],
        "fps": truth["fps"],
        "sample_rate": truth["sample_rate"],
    }


def _write_clip(job: tuple[SynthConfig, str, str, int]) -> dict[str, Any]:
    """Render one clip and write its mp4 then its truth JSON (the JSON last: its presence marks the clip done)."""
    cfg, out_dir, split, index = job
    clip = render_clip(cfg, split, index)
    out = Path(out_dir)
    media.write_video(_media_path(out, clip.id), clip.frames, cfg.fps, clip.audio, cfg.sample_rate)
    atomic.write_text(_truth_path(out, clip.id), json.dumps(clip.truth, indent=1))
    return _index_row(clip.truth)


def _done_row(out_dir: Path, cid: str) -> dict[str, Any] | None:
    """The index row of a clip already on disk, or None when it must be (re)rendered."""
    truth_path = _truth_path(out_dir, cid)
    if not (_media_path(out_dir, cid).is_file() and truth_path.is_file()):
        return None
    try:
        return _index_row(json.loads(truth_path.read_text(encoding="utf-8")))
    except (ValueError, KeyError):
        return None  # a damaged sidecar: render the clip again


def generate(
    cfg: SynthConfig, out_dir: Path, workers: int | None = None, progress: bool = True
) -> pd.DataFrame:
    """Render every clip of every split in `cfg.clips_per_split` into `out_dir` and write `index.csv`.

    Writes `media/<id>.mp4`, `truth/<id>.json` and `index.csv` (columns INDEX_COLUMNS, `path` relative to
    `out_dir`). Clips whose mp4 and JSON both exist are skipped, so an interrupted run resumes. `workers`
    overrides `cfg.workers` (0 = one per core); 1 renders in this process. Returns the index sorted by split, id.
    """
    if cfg.size % 2:
        raise ValueError(f"synth.size must be even (H.264 yuv420p halves the chroma planes), got {cfg.size}")
    out_dir = Path(out_dir)
    (out_dir / "media").mkdir(parents=True, exist_ok=True)
    (out_dir / "truth").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    todo: list[tuple[SynthConfig, str, str, int]] = []
    for split in SPLITS:
        for index in range(cfg.clips_per_split.get(split, 0)):
            row = _done_row(out_dir, clip_id(split, index))
            if row is None:
                todo.append((cfg, str(out_dir), split, index))
            else:
                rows.append(row)

    n_workers = workers if workers is not None else cfg.workers
    n_workers = min(n_workers or os.cpu_count() or 1, max(len(todo), 1))
    with tqdm(total=len(todo), desc="synth", unit="clip", disable=not progress) as bar:
        if n_workers <= 1:
            for job in todo:
                rows.append(_write_clip(job))
                bar.update()
        else:
            # Chunks amortise inter-process overhead; several per worker keep the load balanced.
            chunk = max(1, min(16, len(todo) // (4 * n_workers)))
            with multiprocessing.get_context().Pool(n_workers) as pool:
                for row in pool.imap_unordered(_write_clip, todo, chunksize=chunk):
                    rows.append(row)
                    bar.update()

    index = pd.DataFrame(rows, columns=INDEX_COLUMNS).sort_values(["split", "id"], ignore_index=True)
    tmp = out_dir / f".index.csv.{os.getpid()}.tmp"
    index.to_csv(tmp, index=False)
    os.replace(tmp, out_dir / "index.csv")
    return index


__all__ = ["INDEX_COLUMNS", "SynthClip", "clip_id", "clip_label", "generate", "render_clip"]
