"""The `sample` stage's work: a split's visual features → generated wavs, an index and muxed previews.

In full: docs/library.md, `vaflow.generate.samples`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from vaflow import atomic
from vaflow.data import media
from vaflow.data.journal import SPEC_FILE, SpecFolder
from vaflow.data.pairs import SplitShards
from vaflow.data.shards import sanitize_key
from vaflow.generate.generator import (
    Models,
    Sampler,
    clip_seed,
    decode_audio,
    prior_noise,
    read_wav,
    sample_latents,
    write_wav,
)

__all__ = [
    "INDEX_COLUMNS",
    "INDEX_FILE",
    "SPEC_FILE",
    "SampleReport",
    "mux_window",
    "sample_spec",
    "sample_split",
    "wav_name",
]

FORMAT = 1  # bumped when the folder's contents change meaning
INDEX_FILE = "index.csv"
INDEX_COLUMNS = ["id", "k", "wav", "nfe", "finite"]  # no timing: a resumed run writes the same index


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def sample_spec(
    models: Models,
    features_spec: Mapping[str, Any],
    sampler: Sampler,
    seed: int,
    samples_per_clip: int,
    code: str,
) -> dict[str, Any]:
    """Everything the wavs depend on (batch size and `mux` are not: they change no sample); `code` is the sample
    stage's code identity (`vaflow.code.code_hash` of its import closure)."""
    return {
        "format": FORMAT,
        "model": {"weights": models.flow_hash, "card": _digest(models.card)},
        "wavevae": models.vae_hash,
        "features": _digest(features_spec),  # the encoder and every split's manifest rows (extract_visual)
        "sample_rate": models.sample_rate,
        "sampler": sampler.to_dict(),
        "cfg_applied": sampler.applied_cfg(models.flow),
        "seed": seed,
        "samples_per_clip": samples_per_clip,
        "code": code,
    }


def wav_name(clip_id: str, k: int, samples_per_clip: int) -> str:
    """`<id>.wav` for a single draw per clip, else `<id>-<k>.wav` (ids are sanitised: no dots, no slashes)."""
    key = sanitize_key(clip_id)
    return f"{key}.wav" if samples_per_clip == 1 else f"{key}-{k}.wav"


def mux_window(
    video: str | Path, start: float, duration: float, audio: np.ndarray, sample_rate: int, out: str | Path
) -> None:
    """Write `out` (mp4): the window [start, start + duration] of `video` at its own frame rate and size (cropped
    to even sides for H.264), with `audio` (N,) as its sound, cut or zero-padded to the window."""
    info = media.probe(video)
    if not info.has_video:
        raise media.MediaError(video, "no video stream")
    fps = info.fps or 25.0  # a stream without a nominal rate: 25 fps is ffmpeg's own default
    frames = media.read_frames(video, fps, start=start, duration=duration)
    if not len(frames):
        raise media.MediaError(video, f"no frames in the window {start:g}s + {duration:g}s")
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    media.write_video(out, frames[:, :h, :w], fps, audio, sample_rate)


@dataclass
class SampleReport:
    """What `sample_split` left in the folder (all rows, in clip order) and what this call did."""

    rows: list[dict[str, Any]]
    clips: int
    generated: int = 0
    skipped: int = 0
    muxed: int = 0  # previews this call wrote
    previews: int = 0  # previews the folder holds
    mux_failed: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    seconds: list[float] = field(default_factory=list)  # per wav this call generated

    def metrics(self) -> dict[str, float]:
        """What the folder holds: the same for every run that ends with the same samples."""
        nfe = [r["nfe"] for r in self.rows]
        return {
            "clips": self.clips,
            "samples": len(self.rows),
            "nfe_per_clip": float(np.mean(nfe)) if nfe else 0.0,
            "nonfinite": sum(not r["finite"] for r in self.rows),
            "muxed": self.previews,
            "mux_failed": len(self.mux_failed),
        }

    def run_figures(self) -> dict[str, float]:
        """How this run went (time per clip, work done vs found done): differs between runs of the same result."""
        return {
            "seconds_per_clip": float(np.mean(self.seconds)) if self.seconds else 0.0,
            "generated": self.generated,
            "skipped": self.skipped,
        }


@dataclass
class _Draw:
    """One wav to generate: draw k of a clip."""

    id: str
    k: int
    feat: np.ndarray  # (T_v, D_v)
    seed: int


def _finished(folder: SpecFolder) -> dict[tuple[str, int], dict[str, Any]]:
    """Index rows of the wavs already done, by (id, k): those of an earlier run's index.csv, updated by the
    journal of a run killed since; a row counts only while its wav exists."""
    rows: dict[str, dict[str, Any]] = {}
    index = folder.root / INDEX_FILE
    if index.is_file():
        frame = pd.read_csv(index, dtype={"id": str, "wav": str}, keep_default_na=False)
        if missing := sorted(set(INDEX_COLUMNS) - set(frame.columns)):
            raise ValueError(f"{index}: missing column(s) {missing}; delete it to regenerate its wavs")
        for r in frame.to_dict("records"):
            rows[r["wav"]] = {"id": r["id"], "k": int(r["k"]), "wav": r["wav"], "nfe": int(r["nfe"]),
                              "finite": bool(r["finite"])}  # fmt: skip
    rows.update(folder.journal().read().done)
    return {(row["id"], int(row["k"])): row for wav, row in rows.items() if (folder.root / wav).is_file()}


def _batches(
    split: SplitShards, done: Mapping[tuple[str, int], Any], draws: int, seed: int, size: int, ids: list[str]
) -> Iterator[list[_Draw]]:
    """Batches of `size` draws not `done`, in clip order; appends every clip id it reads to `ids`."""
    batch: list[_Draw] = []
    for sample in split.samples():
        ids.append(sample["id"])
        for k in range(draws):
            if (sample["id"], k) not in done:
                batch.append(_Draw(sample["id"], k, sample["feat"], clip_seed(seed, sample["id"], k)))
                if len(batch) == size:
                    yield batch
                    batch = []
    if batch:
        yield batch


def sample_split(
    models: Models,
    split: SplitShards,
    folder: SpecFolder,
    sampler: Sampler,
    seed: int,
    samples_per_clip: int,
    batch_size: int,
    mux: int = 0,
    windows: Mapping[str, tuple[str, float, float]] | None = None,
    progress: bool = True,
) -> SampleReport:
    """Generate the wavs of every clip of `split` that the folder lacks, then the muxed previews, then index.csv.

    `folder` must already hold this run's spec (`SpecFolder.sync(sample_spec(...))`). `windows`: clip id →
    (video path, start, duration) of the original clip, for the `mux` previews. Returns the report of the whole
    folder.
    """
    if folder.read_spec() is None:
        raise FileNotFoundError(f"{folder.root / SPEC_FILE} not found: sync the folder with its spec first")
    out_dir = folder.root
    done = _finished(folder)
    journal = folder.journal()
    ids: list[str] = []
    device = next(models.flow.parameters()).device
    shape = (models.latent_length, models.latent_dim)
    report = SampleReport(rows=[], clips=0)
    total = split.n_clips * samples_per_clip
    show = progress and sys.stderr.isatty()
    with tqdm(total=total, initial=min(len(done), total), desc="sample", unit="wav", disable=not show) as bar:
        for batch in _batches(split, done, samples_per_clip, seed, batch_size, ids):
            x_v = torch.from_numpy(np.stack([d.feat for d in batch]).astype(np.float32)).to(device)
            eps = prior_noise([d.seed for d in batch], shape)  # (B, T_a, D_a), one generator per draw
            start = time.perf_counter()
            latents, nfe = sample_latents(models.flow, x_v, eps, sampler)  # (B, T_a, D_a)
            audio = decode_audio(models.vae, latents)  # (B, T_a·hop)
            seconds = (time.perf_counter() - start) / len(batch)
            for d, wav, n in zip(batch, audio, nfe, strict=True):
                name = wav_name(d.id, d.k, samples_per_clip)
                (out_dir / name).with_suffix(".mp4").unlink(missing_ok=True)  # a preview of the old wav
                finite = write_wav(out_dir / name, wav, models.sample_rate)
                row = {"id": d.id, "k": d.k, "wav": name, "nfe": n, "finite": finite}
                journal.done(name, row)
                done[(d.id, d.k)] = row
            report.generated += len(batch)
            report.seconds += [seconds] * len(batch)
            bar.update(len(batch))
    report.rows = [done[(i, k)] for i in ids for k in range(samples_per_clip)]
    report.clips, report.skipped = len(ids), len(report.rows) - report.generated
    _mux_previews(report, out_dir, ids[:mux], samples_per_clip, windows or {})
    _remove_strays(out_dir, report, ids[:mux], samples_per_clip)
    report.previews = sum(
        (out_dir / wav_name(i, 0, samples_per_clip)).with_suffix(".mp4").is_file() for i in ids[:mux]
    )
    index = pd.DataFrame(report.rows, columns=INDEX_COLUMNS)
    with folder.locked():
        atomic.write_text(out_dir / INDEX_FILE, index.to_csv(index=False))
        journal.remove()  # folded into index.csv
    return report


def _mux_previews(
    report: SampleReport,
    out_dir: Path,
    ids: list[str],
    samples_per_clip: int,
    windows: Mapping[str, tuple[str, float, float]],
) -> None:
    """An mp4 per clip in `ids` that has none yet: its original window with draw 0's wav. A clip whose video
    cannot be read any more is reported (and left without a preview) rather than failing the stage."""
    for clip_id in ids:
        wav = out_dir / wav_name(clip_id, 0, samples_per_clip)
        out = wav.with_suffix(".mp4")
        if out.is_file():
            continue
        if clip_id not in windows:
            report.mux_failed.append((clip_id, "not in the manifest"))
            continue
        path, start, duration = windows[clip_id]
        audio, rate = read_wav(wav)
        try:
            mux_window(path, start, duration, audio, rate, out)
        except media.MediaError as err:
            report.mux_failed.append((clip_id, err.reason))
            continue
        report.muxed += 1
    for clip_id, reason in report.mux_failed:
        print(f"warning: no muxed preview for {clip_id}: {reason}", file=sys.stderr)


def _remove_strays(out_dir: Path, report: SampleReport, muxed: list[str], samples_per_clip: int) -> None:
    """Delete wavs/mp4s that are not this run's (e.g. previews past a lowered `mux`, clips gone from the split)
    and temporary files left by a killed run."""
    keep = {r["wav"] for r in report.rows}
    keep |= {Path(wav_name(i, 0, samples_per_clip)).with_suffix(".mp4").name for i in muxed}
    for p in out_dir.iterdir():
        stray = p.suffix in (".wav", ".mp4") and p.name not in keep
        if p.is_file() and (stray or p.name.endswith(".tmp")):
            p.unlink()
