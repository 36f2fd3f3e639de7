"""Training and evaluating the CAVP-style encoder inside the pipeline (paper §4.5, after Diff-Foley).

Data: each clip's window decoded once into memory, frames at the encoder's fps and input size plus the log-mel of
its audio. That suits the synthetic world (256 clips of 2 s are ~40 MB); a VGGSound-scale CAVP would stream from
shards instead and is imported (mode `import`) rather than trained here.

Evaluation on held-out clips, the two abilities the two contrastive losses train:
- semantic: video -> audio retrieval among all clips (top-1 / top-5; chance k / N);
- temporal: for a video window, is the aligned audio window closer than the same clip's audio shifted in time to a
  window that does not overlap it (chance 0.5)?
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from vaflow.data import media
from vaflow.models.cavp import CAVP, CAVPConfig, log_mel, retrieval_topk, temporal_discrimination

__all__ = [
    "ClipArrays",
    "ClipBatches",
    "CAVPObjective",
    "CAVPEvaluation",
    "cavp_config",
    "cavp_loss",
    "evaluate_cavp",
    "load_clips",
]

# Mel front end in seconds, so it follows the clip's sample rate: a 10 ms hop resolves onsets well below one
# video frame (250 ms at 4 fps); a ~32 ms window (next power of two) is the usual speech/sound-event choice.
_MEL_HOP_S = 0.010
_MEL_WINDOW_S = 0.032


def cavp_config(fps: float, sample_rate: int, embed_dim: int, **overrides: Any) -> CAVPConfig:
    """A CAVPConfig for clips at `sample_rate` fed at `fps`, with D_v = `embed_dim`; other sizes keep their defaults."""
    hop = max(1, round(sample_rate * _MEL_HOP_S))
    n_fft = 2 ** math.ceil(math.log2(sample_rate * _MEL_WINDOW_S))
    return CAVPConfig(
        fps=fps, sample_rate=sample_rate, embed_dim=embed_dim, hop=hop, n_fft=n_fft, **overrides
    )


# ----------------------------------------------------------------------------------------------------------------
# Data: decoded clips in memory
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ClipArrays:
    """Decoded clip windows: frames (N, T, H, W, 3) uint8 and log-mel (N, n_mels, F) float32, in `ids` order."""

    ids: list[str]
    frames: torch.Tensor
    mel: torch.Tensor
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (id, reason) of clips left out

    def __len__(self) -> int:
        return len(self.ids)


def _decode_clip(row: Mapping[str, Any], config: CAVPConfig, num_frames: int, num_samples: int):
    """One clip's window -> (frames (T, H, W, 3) uint8, audio (N,) float32); MediaError names a short one."""
    size = (config.image_size, config.image_size)
    frames = media.read_frames(
        row["path"], config.fps, size=size, start=row["start"], duration=row["duration"]
    )
    if len(frames) < num_frames:
        raise media.MediaError(row["path"], f"too short: {len(frames)} of {num_frames} frames decoded")
    audio = media.read_audio(row["path"], config.sample_rate, start=row["start"], duration=row["duration"])
    if len(audio) < num_samples:
        raise media.MediaError(row["path"], f"too short: {len(audio)} of {num_samples} audio samples decoded")
    return frames[:num_frames], audio[:num_samples]


def load_clips(
    rows: Iterable[Mapping[str, Any]],
    config: CAVPConfig,
    duration: float,
    workers: int = 2,
    progress: bool = False,
) -> ClipArrays:
    """Decode every clip window of `rows` (manifest rows: id, path, start, duration) for `config`'s model.

    Each window yields T = round(duration · fps) frames at (image_size, image_size) and round(duration · sample_rate)
    audio samples (its log-mel: (n_mels, N // hop + 1)). A clip that fails to decode or falls short is left out and
    listed in `rejected`; nothing is padded. `workers` ffmpeg decodes run at once.
    """
    from tqdm import tqdm

    rows = list(rows)
    num_frames = max(1, round(duration * config.fps))
    num_samples = round(duration * config.sample_rate)

    def decode(row):
        try:
            return _decode_clip(row, config, num_frames, num_samples)
        except media.MediaError as err:
            return err

    ids, frames, audio, rejected = [], [], [], []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = tqdm(
            pool.map(decode, rows), total=len(rows), desc="decode", unit="clip", disable=not progress
        )
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, media.MediaError):
                rejected.append((str(row["id"]), result.reason))
                continue
            ids.append(str(row["id"]))
            frames.append(result[0])
            audio.append(result[1])
    size = config.image_size
    if not ids:
        empty_mel = torch.empty(0, config.n_mels, num_samples // config.hop + 1)
        return ClipArrays(
            [], torch.empty(0, num_frames, size, size, 3, dtype=torch.uint8), empty_mel, rejected
        )
    waves = torch.from_numpy(np.stack(audio))  # (N, samples)
    c = config  # the model's own front end (CAVP.log_mel), computed once here rather than every step
    mel = torch.cat([log_mel(chunk, c.sample_rate, c.n_mels, c.hop, c.n_fft) for chunk in waves.split(64)])
    return ClipArrays(ids, torch.from_numpy(np.stack(frames)), mel, rejected)


class ClipBatches:
    """Batches {"frames": (B, T, H, W, 3) uint8, "mel": (B, n_mels, F)} of in-memory clips, reshuffled each epoch.

    Every rank draws the same seeded permutation per epoch and takes its own slice of each global batch, so N ranks
    together see what one process sees (the trainer's per-rank batch is `batch_size`). The last incomplete global
    batch is dropped: contrastive negatives come from the batch, and a small one makes the task easier.
    """

    def __init__(
        self, data: ClipArrays, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0
    ) -> None:
        if len(data) < batch_size * world:
            raise ValueError(
                f"{len(data)} training clips are fewer than one global batch of {batch_size * world}: "
                "lower visual_encoder.trainer.batch_size or add clips"
            )
        self.data, self.batch_size, self.rank, self.world, self.seed = data, batch_size, rank, world, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data) // (self.batch_size * self.world)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.data), generator=g)
        step = self.batch_size * self.world
        for k in range(len(self)):
            idx = order[k * step + self.rank * self.batch_size : k * step + (self.rank + 1) * self.batch_size]
            yield {"frames": self.data.frames[idx], "mel": self.data.mel[idx]}


# ----------------------------------------------------------------------------------------------------------------
# The objective the shared Trainer optimises
# ----------------------------------------------------------------------------------------------------------------


class CAVPObjective(nn.Module):
    """CAVP's two-part loss as a module forward, so one DDP forward covers both towers and both temperatures."""

    def __init__(self, model: CAVP) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, frames: torch.Tensor, mel: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Frames (B, T, H, W, 3), log-mel (B, n_mels, F) -> (total loss, {"semantic", "temporal"} detached)."""
        return self.model.loss(frames, mel)


def cavp_loss(module: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """`loss_fn` for the Trainer: `module` is a CAVPObjective (DDP-wrapped or not)."""
    total, parts = module(batch["frames"], batch["mel"])
    return total, {f"loss_{name}": float(value) for name, value in parts.items()}


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CAVPEvaluation:
    """Held-out retrieval and temporal-discrimination scores with their chance levels."""

    n_clips: int
    top1: float
    top5: float
    top1_chance: float
    top5_chance: float
    temporal: float  # fraction of (clip, window pair) trials won by the aligned audio
    temporal_trials: int
    temporal_chance: float = 0.5

    def metrics(self) -> dict[str, float]:
        """Flat metric names for MLflow and `metrics/*.json`."""
        return {
            "eval_clips": self.n_clips,
            "retrieval_top1": self.top1,
            "retrieval_top5": self.top5,
            "retrieval_top1_chance": self.top1_chance,
            "retrieval_top5_chance": self.top5_chance,
            "temporal_discrimination": self.temporal,
            "temporal_discrimination_chance": self.temporal_chance,
            "temporal_trials": self.temporal_trials,
        }


def shifted_offsets(num_frames: int, window: int, n: int, trials: int, seed: int = 0) -> torch.Tensor:
    """Window-start pairs (n, trials, 2) int64: an aligned start and a shifted start in the same clip.

    The shifted window does not overlap the aligned one when the clip holds two disjoint windows, else it is shifted
    by at least one frame. Seeded, so every evaluation of every model sees the same trials.
    """
    starts = num_frames - window + 1
    gap = window if num_frames >= 2 * window else 1
    pairs = [(a, b) for a in range(starts) for b in range(starts) if abs(a - b) >= gap]
    if not pairs:
        raise ValueError(f"clips of {num_frames} frames hold no two windows of {window} frames {gap} apart")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(pairs), (n, trials), generator=g)
    return torch.tensor(pairs, dtype=torch.int64)[pick]  # (n, trials, 2)


@torch.no_grad()
def evaluate_cavp(
    model: CAVP, data: ClipArrays, batch_size: int = 32, trials: int = 4, seed: int = 0
) -> CAVPEvaluation:
    """Score `model` on held-out clips: video -> audio retrieval among all N clips, aligned-vs-shifted windows.

    Retrieval ranks every clip's audio for each clip's video by cosine of the time-pooled embeddings (top-k
    chance k / N). Temporal discrimination draws `trials` window pairs per clip (`shifted_offsets`) and counts the
    trials where the video window is closer to its aligned audio window than to the shifted one (chance 0.5).
    """
    n = len(data)
    if n < 2:
        raise ValueError(f"evaluation needs at least 2 clips, got {n}")
    was_training = model.training
    model.eval()
    offsets = shifted_offsets(data.frames.shape[1], model.config.window, n, trials, seed)  # (N, trials, 2)
    video, audio, win_v, win_a, win_s = [], [], [], [], []
    for start in range(0, n, batch_size):
        frames = data.frames[start : start + batch_size]  # (b, T, H, W, 3)
        mel = data.mel[start : start + batch_size]  # (b, n_mels, F)
        v, a = model.embed_clips(frames, mel)  # (b, D), (b, D)
        video.append(v.cpu())
        audio.append(a.cpu())
        pairs = offsets[start : start + batch_size]  # (b, trials, 2)
        for t in range(trials):
            wv, wa = model.embed_windows(frames, mel, pairs[:, t])  # (b, 2, D), (b, 2, D)
            win_v.append(wv[:, 0].cpu())  # video window at the aligned start
            win_a.append(wa[:, 0].cpu())  # audio at the same start
            win_s.append(wa[:, 1].cpu())  # audio at the shifted start
    model.train(was_training)
    top = retrieval_topk(torch.cat(video), torch.cat(audio), ks=(1, 5))
    temporal = temporal_discrimination(torch.cat(win_v), torch.cat(win_a), torch.cat(win_s))
    return CAVPEvaluation(
        n_clips=n,
        top1=top["top1"],
        top5=top["top5"],
        top1_chance=1 / n,
        top5_chance=min(5, n) / n,
        temporal=temporal,
        temporal_trials=n * trials,
    )
