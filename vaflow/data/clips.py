"""Clip windows decoded into memory, for the recipes that hold a whole split in RAM (WaveVAE, CAVP, evaluators).

`decode_clips(rows, decode)` runs `decode(row)` over manifest rows and keeps their order; a clip whose decode raises
MediaError or ClipRejected is left out and listed with its one-line reason (`extract.rejection_reason`, the same
text as the extraction stages' rejected lists), while a missing ffmpeg stops the load: it is a setup problem, and
rejecting every clip for it would hide it. `read_window` is the decode of the recipes that need frames and audio;
`ClipBatches` the training stream over such tensors that the shared Trainer reads.

Scale: a split small enough sits in memory (`MemoryClips`); a larger one is streamed (`StreamedClips`): checked
once (`scan_clips`: the same decode, nothing kept), then every batch decodes its clips again from their files,
`workers` ffmpeg processes ahead of the step, so memory is bounded by the clips in flight, not by the split. Both
stores give a stream the same batches for the same plan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vaflow.data import media
from vaflow.data.extract import ClipRejected, rejection_reason
from vaflow.data.media import FFmpegNotFoundError, MediaError
from vaflow.data.parallel import prefetched

__all__ = [
    "ClipBatches",
    "ClipSet",
    "DecodedClips",
    "MemoryClips",
    "StreamedClips",
    "decode_clips",
    "load_split",
    "open_clips",
    "read_window",
    "report_decoded",
    "scan_clips",
]


@dataclass
class DecodedClips:
    """The clips that decoded (their rows and `decode` outputs, in row order) and the rejected ones."""

    rows: list[Mapping[str, Any]]
    parts: list[tuple[np.ndarray, ...]]  # decode(row) of each kept row
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (id, reason), in row order

    @property
    def ids(self) -> list[str]:
        """The kept clips' ids."""
        return [str(r["id"]) for r in self.rows]

    def stack(self, part: int, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """Part `part` of every kept clip stacked (N, *shape); an empty (0, *shape) tensor of `dtype` when none."""
        if not self.parts:
            return torch.empty((0, *shape), dtype=dtype)
        return torch.from_numpy(np.stack([p[part] for p in self.parts]))


def decode_clips(
    rows: Iterable[Mapping[str, Any]],
    decode: Callable[[Mapping[str, Any]], tuple[np.ndarray, ...]],
    workers: int = 2,
    progress: bool = False,
) -> DecodedClips:
    """Decode every row with `decode(row) -> arrays`, `workers` at a time (ffmpeg runs as subprocesses, so threads
    overlap the decodes); rows whose decode raises MediaError or ClipRejected are listed, not kept."""
    rows = list(rows)

    def guarded(row: Mapping[str, Any]) -> tuple[np.ndarray, ...] | Exception:
        try:
            return decode(row)
        except FFmpegNotFoundError:
            raise
        except (MediaError, ClipRejected) as err:
            return err

    out = DecodedClips([], [])
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(guarded, rows)
        for row, result in tqdm(zip(rows, results, strict=True), total=len(rows), desc="decode", unit="clip",
                                disable=not progress):  # fmt: skip
            if isinstance(result, Exception):
                out.rejected.append((str(row["id"]), rejection_reason(result)))
            else:
                out.rows.append(row)
                out.parts.append(result)
    return out


def report_decoded(split: str, count: int, rejected: Sequence[tuple[str, str]], how: str = "") -> None:
    """Print how many clips of `split` decoded (`how`: the store's `how`, or nothing) and each rejected clip's reason."""
    print(f"{split}: {count} clips decoded{f' ({how})' if how else ''}, {len(rejected)} rejected")
    for clip_id, reason in rejected:
        print(f"  rejected {clip_id}: {reason}")


def scan_clips(
    rows: Iterable[Mapping[str, Any]],
    decode: Callable[[Mapping[str, Any]], tuple[np.ndarray, ...]],
    workers: int = 2,
    progress: bool = False,
    summary: Callable[[tuple[np.ndarray, ...]], tuple[np.ndarray, ...]] | None = None,
) -> DecodedClips:
    """`decode_clips` keeping nothing but the verdict: the rows that decode and the rejected ones; `parts` holds
    `summary(arrays)` of each kept clip when given (a few numbers: statistics a recipe needs of the whole split),
    else nothing. Memory stays at the clips being decoded, whatever the number of rows."""

    def check(row: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
        arrays = decode(row)
        return summary(arrays) if summary is not None else ()

    return decode_clips(rows, check, workers, progress)


@dataclass
class MemoryClips:
    """Clips decoded into memory: named tensors with one row per clip (equal first dimension)."""

    tensors: Mapping[str, torch.Tensor]

    def __post_init__(self) -> None:
        sizes = {len(t) for t in self.tensors.values()}
        if len(sizes) != 1:
            raise ValueError(f"clip tensors of different lengths: { {k: len(t) for k, t in self.tensors.items()} }")

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    @property
    def how(self) -> str:
        """How the clips are read, for a stage's log line."""
        return "in memory"

    def shape(self, name: str) -> tuple[int, ...]:
        """One clip's shape of tensor `name`."""
        return tuple(self.tensors[name].shape[1:])

    def batches(self, index: torch.Tensor) -> Iterator[dict[str, torch.Tensor]]:
        """The clips of each row of `index` (K, B): K batches {name: (B, ...)}."""
        for idx in index:
            yield {name: t[idx] for name, t in self.tensors.items()}


@dataclass
class StreamedClips:
    """Clips read from their files whenever a batch needs them: `rows` are the clips `scan_clips` kept and
    `decode(row)` gives one clip's named arrays, of `shapes`; `workers` threads decode up to two batches ahead."""

    rows: list[Mapping[str, Any]]
    decode: Callable[[Mapping[str, Any]], Mapping[str, np.ndarray]]
    shapes: Mapping[str, tuple[int, ...]]
    workers: int = 2

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def how(self) -> str:
        """How the clips are read, for a stage's log line."""
        return f"streamed by {self.workers} decoders"

    def shape(self, name: str) -> tuple[int, ...]:
        """One clip's shape of array `name`."""
        return tuple(self.shapes[name])

    def batches(self, index: torch.Tensor) -> Iterator[dict[str, torch.Tensor]]:
        """The clips of each row of `index` (K, B), decoded again: K batches {name: (B, ...)}."""
        if index.numel() == 0:
            return
        size = index.shape[1]
        clips = prefetched(index.flatten().tolist(), lambda i: self.decode(self.rows[i]), self.workers, 2 * size)
        for _ in range(len(index)):
            batch = [next(clips) for _ in range(size)]
            yield {name: torch.from_numpy(np.stack([c[name] for c in batch])) for name in self.shapes}


def open_clips(
    rows: Sequence[Mapping[str, Any]],
    decode: Callable[[Mapping[str, Any]], Mapping[str, np.ndarray]],
    shapes: Mapping[str, tuple[int, ...]],
    clip_bytes: int,
    in_memory_mb: float,
    workers: int = 2,
    progress: bool = True,
    summary: Callable[[tuple[np.ndarray, ...]], tuple[np.ndarray, ...]] | None = None,
) -> tuple[MemoryClips | StreamedClips, DecodedClips]:
    """The usable clips of `rows` as a store: decoded into memory when `len(rows) × clip_bytes` is at most
    `in_memory_mb` MB, else streamed (checked once by `scan_clips`, then decoded batch by batch by `workers`
    threads). Returns (store, the decode's verdict: kept rows, rejected clips; `parts` holds the decoded arrays in
    memory, `summary` of each clip's arrays when streamed and `summary` is given)."""

    def arrays(row: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
        out = decode(row)
        return tuple(out[name] for name in shapes)

    if len(rows) * clip_bytes <= in_memory_mb * 2**20:
        clips = decode_clips(rows, arrays, max(1, workers), progress)
        tensors = {name: clips.stack(i, shape, torch.float32) for i, (name, shape) in enumerate(shapes.items())}
        return MemoryClips(tensors), clips
    checked = scan_clips(rows, arrays, max(1, workers), progress, summary)
    return StreamedClips(checked.rows, decode, shapes, workers), checked


def read_window(
    row: Mapping[str, Any],
    fps: float,
    size: int,
    sample_rate: int,
    duration: float,
    n_frames: int,
    n_samples: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A clip's window `duration` s from `row["start"]` -> (frames (n_frames, size, size, 3) uint8, audio
    (n_samples,) float32), cut to length; a window that decodes shorter is a ClipRejected (nothing is padded)."""
    frames, audio = media.read_av(row["path"], fps, (size, size), sample_rate, row["start"], duration)
    if len(frames) < n_frames:
        raise ClipRejected(f"too short: {len(frames)} of {n_frames} frames decoded")
    if len(audio) < n_samples:
        raise ClipRejected(f"too short: {len(audio)} of {n_samples} audio samples decoded")
    return frames[:n_frames], audio[:n_samples]


@dataclass
class ClipSet:
    """Decoded clips: frames (N, T, side, side, 3) uint8 and audio (N, samples) float32, in `ids` order."""

    ids: list[str]
    labels: list[str]
    frames: torch.Tensor
    audio: torch.Tensor
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (id, reason) of clips left out

    def __len__(self) -> int:
        return len(self.ids)


def load_split(rows: Iterable[Mapping[str, Any]], config: Any, duration: float, workers: int = 2) -> ClipSet:
    """Decode every clip window of `rows` (manifest rows: id, path, start, duration, label) for `config` (anything
    with `fps`, `side` and `sample_rate`: the evaluators' config).

    Each window gives T = round(duration · fps) frames at side × side and round(duration · sample_rate) samples.
    A clip that fails to decode or falls short is left out and listed in `rejected`; nothing is padded.
    """
    n_frames = max(1, round(duration * config.fps))
    n_samples = round(duration * config.sample_rate)
    s = config.side

    def decode(row: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        return read_window(row, config.fps, s, config.sample_rate, duration, n_frames, n_samples)

    clips = decode_clips(rows, decode, workers)
    return ClipSet(
        clips.ids,
        [str(r["label"]) for r in clips.rows],
        clips.stack(0, (n_frames, s, s, 3), torch.uint8),
        clips.stack(1, (n_samples,), torch.float32),
        clips.rejected,
    )


class ClipBatches:
    """Batches {name: tensor} of clips (in memory or streamed), reshuffled each epoch.

    Every rank draws the same seeded permutation per epoch and takes its own slice of each global batch, so N ranks
    together see what one process sees (the trainer's per-rank batch is `batch_size`). The last incomplete global
    batch is dropped: contrastive negatives come from the batch, and a small one makes the task easier. `what`
    names the batch-size setting in the error of a split smaller than one global batch.
    """

    def __init__(
        self,
        clips: Mapping[str, torch.Tensor] | MemoryClips | StreamedClips,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        what: str = "trainer.batch_size",
    ) -> None:
        self.clips = clips if isinstance(clips, MemoryClips | StreamedClips) else MemoryClips(clips)
        self.n = len(self.clips)
        if self.n < batch_size * world:
            raise ValueError(
                f"{self.n} training clips are fewer than one global batch of {batch_size * world}: "
                f"lower {what} or add clips"
            )
        self.batch_size, self.rank, self.world, self.seed = batch_size, rank, world, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Shuffle by `epoch`'s permutation from the next pass on."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // (self.batch_size * self.world)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        step = self.batch_size * self.world
        plan = order[: len(self) * step].view(len(self), self.world, self.batch_size)  # (K, world, B)
        yield from self.clips.batches(plan[:, self.rank])
