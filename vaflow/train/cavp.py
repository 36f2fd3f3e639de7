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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vaflow.config.section import ConfigError
from vaflow.data.clips import (
    ClipBatches,
    DecodedClips,
    MemoryClips,
    StreamedClips,
    open_clips,
    read_window,
    report_decoded,
)
from vaflow.data.features import export_encoder
from vaflow.data.prepare import load_manifest
from vaflow.models.cavp import CAVP, CAVPConfig, log_mel, retrieval_topk, temporal_discrimination
from vaflow.train.checkpoint import run_dir
from vaflow.train.distributed import all_gather_with_grad, broadcast_from_main, group_rank
from vaflow.train.numerics import seed_everything
from vaflow.train.trainer import Trainer

__all__ = [
    "ClipArrays",
    "CAVPObjective",
    "CAVPEvaluation",
    "cavp_config",
    "cavp_loss",
    "evaluate_cavp",
    "load_clips",
    "open_train_clips",
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
# Data: decoded clips, in memory or streamed
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
    store, clips = open_train_clips(list(rows), config, duration, workers, float("inf"), progress)
    assert isinstance(store, MemoryClips)
    return ClipArrays(clips.ids, store.tensors["frames"], store.tensors["mel"], clips.rejected)


def open_train_clips(
    rows: Sequence[Mapping[str, Any]],
    config: CAVPConfig,
    duration: float,
    workers: int,
    in_memory_mb: float,
    progress: bool = False,
) -> tuple[MemoryClips | StreamedClips, DecodedClips]:
    """The clips of `rows` as {"frames", "mel"} (`clips.open_clips`): in memory when their decoded windows take at
    most `in_memory_mb` MB (the log-mel then computed in chunks of 64 clips), else streamed (each clip's log-mel
    computed alone: equal to the chunked one to float rounding)."""
    num_frames = max(1, round(duration * config.fps))
    num_samples = round(duration * config.sample_rate)
    c, size = config, config.image_size

    def decode(row: Mapping[str, Any]) -> dict[str, np.ndarray]:
        # The row's own window is read, then cut to the T frames and N samples of `duration`.
        frames, audio = read_window(row, c.fps, size, c.sample_rate, row["duration"], num_frames, num_samples)
        return {"frames": frames, "audio": audio}

    def mel_of(audio: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, n_mels, F): the model's own front end
        return log_mel(audio, c.sample_rate, c.n_mels, c.hop, c.n_fft)

    def streamed(row: Mapping[str, Any]) -> dict[str, np.ndarray]:
        clip = decode(row)
        return {"frames": clip["frames"], "mel": mel_of(torch.from_numpy(clip["audio"])[None])[0].numpy()}

    frame_shape, clip_bytes = (num_frames, size, size, 3), num_frames * size * size * 3 + num_samples * 4
    shapes = {"frames": frame_shape, "audio": (num_samples,)}
    store, clips = open_clips(rows, decode, shapes, clip_bytes, in_memory_mb, workers, progress)
    mel_shape = (c.n_mels, num_samples // c.hop + 1)
    if isinstance(store, StreamedClips):
        return StreamedClips(store.rows, streamed, {"frames": frame_shape, "mel": mel_shape}, workers), clips
    waves = store.tensors["audio"]  # (N, samples)
    # Computed once here rather than every step.
    mel = (
        torch.cat([mel_of(chunk) for chunk in waves.split(64)]) if len(waves) else torch.empty(0, *mel_shape)
    )
    return MemoryClips({"frames": store.tensors["frames"].to(torch.uint8), "mel": mel}), clips


# ----------------------------------------------------------------------------------------------------------------
# The objective the shared Trainer optimises
# ----------------------------------------------------------------------------------------------------------------


class CAVPObjective(nn.Module):
    """CAVP's two-part loss as a module forward, so one DDP forward covers both towers and both temperatures.

    Under DDP (world W, each rank B = global/W clips) the semantic contrast runs over the GLOBAL batch: every rank
    gathers all W·B clip embeddings with their gradients (open_clip's ClipLoss with `gather_with_grad=True`,
    `local_loss=False`) and computes the same global loss L. The temporal windows are drawn for the global batch on
    rank 0 and shared, so W processes draw what one process draws. A W-process run then follows the 1-process run
    at the same global batch (tests/train/test_cavp_ranks.py). `global_negatives=False` contrasts each rank's own
    clips only (negatives from B clips, not W·B): features then depend on the number of processes.

    Why the gradient comes out exactly right (counted once, not W times):
    - Tower weights θ (before the gather), rank r's embeddings e_r. `all_gather_with_grad`'s backward returns
      Σ_s ∂L_s/∂e_r over the W ranks' losses L_s; all equal L, so rank r's local gradient is W·(∂L/∂e_r)(∂e_r/∂θ).
      DDP all-reduces gradients as an AVERAGE (sum / W): (1/W)·Σ_r W·(∂L/∂e_r)(∂e_r/∂θ) = Σ_r (∂L/∂e_r)(∂e_r/∂θ)
      = ∂L/∂θ, the 1-process gradient.
    - The semantic temperature (used after the gather): each rank gets the whole ∂L/∂s; the average of W equal
      values is ∂L/∂s.
    - The temporal loss stays local (its negatives are windows of the same clip): rank r's L_t,r is the mean over
      its B clips, the global L_t = (1/W)·Σ_r L_t,r, and DDP's average of the local gradients is ∂L_t/∂θ.
    A gather whose backward kept only the local slice (no sum) would give the towers ∂L/∂θ / W while the
    temperature kept ∂L/∂s — no single loss scale could fix both; the summing backward needs none. The logged loss
    (the trainer's mean over ranks) is likewise the global one: L + mean_r L_t,r.
    """

    def __init__(self, model: CAVP, global_negatives: bool = True) -> None:
        super().__init__()
        self.model = model
        self.global_negatives = global_negatives

    def forward(
        self, frames: torch.Tensor, mel: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Frames (B, T, H, W, 3), log-mel (B, n_mels, F) -> (total loss, {"semantic", "temporal"} detached)."""
        rank, world = group_rank()
        if world == 1:  # one process: no gather, the windows drawn as they always were
            return self.model.loss(frames, mel)
        b = frames.shape[0]
        # Every rank draws windows for the global batch (same shapes); rank 0's draw, the one a single process
        # would make from the same seed, is shared and each rank takes its clips' rows.
        offsets = self.model.sample_offsets(b * world, frames.shape[1]).to(frames.device)  # (W·B, K)
        offsets = broadcast_from_main(offsets)[rank * b : (rank + 1) * b]  # (B, K)
        gather = all_gather_with_grad if self.global_negatives else None
        return self.model.loss(frames, mel, offsets=offsets, gather=gather)


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


# ----------------------------------------------------------------------------------------------------------------
# The visual_encoder stage's measurements and imports
# ----------------------------------------------------------------------------------------------------------------

# The pixels stand-in reads frames at the synthetic world's size; area pooling then brings them to `pixels.side`.
PIXELS_INPUT_SIZE = (64, 64)


def evaluate_encoder(model: CAVP, manifest: Path, duration: float) -> dict[str, float]:
    """Held-out retrieval and temporal discrimination on the test split, printed and returned as metrics."""
    rows = load_manifest(manifest, "test").to_dict("records")
    test = load_clips(rows, model.config, duration)
    if len(test) < 2:
        print(f"test: {len(test)} usable clips, too few to evaluate the encoder")
        return {}
    scores = evaluate_cavp(model, test)
    print(
        f"test ({scores.n_clips} clips): retrieval top-1 {scores.top1:.3f} (chance {scores.top1_chance:.3f}),"
        f" top-5 {scores.top5:.3f} (chance {scores.top5_chance:.3f}); temporal discrimination"
        f" {scores.temporal:.3f} (chance {scores.temporal_chance:.1f}, {scores.temporal_trials} trials)"
    )
    return scores.metrics()


def import_encoder(cfg: Any, out: Path, manifest: Path, duration: float) -> tuple[Any, dict[str, float]]:
    """Write the encoder directory of an imported encoder (cavp, clip) or of the pixels stand-in for a
    `visual_encoder` section `cfg`; returns (encoder, figures: the held-out scores of an imported CAVP)."""
    if cfg.kind == "cavp":
        encoder = export_encoder(out, "cavp", {}, cfg.cavp.checkpoint)
        return encoder, evaluate_encoder(encoder.model, manifest, duration)
    if cfg.kind == "clip":
        options = {"model_name": cfg.clip.model_name, "normalize": cfg.clip.normalize, "fps": cfg.frame_rate}
        return export_encoder(out, "clip", options, cfg.clip.weights), {}
    side = (cfg.pixels.side, cfg.pixels.side)
    options = {"fps": cfg.frame_rate, "input_size": PIXELS_INPUT_SIZE, "size": side}
    return export_encoder(out, "pixels", options), {}


def train_encoder(cfg: Any, clip: Any, manifest: Path, checkpoints: str | Path, code: str, tracker: Any
                  ) -> tuple[CAVP, dict[str, float]] | None:  # fmt: skip
    """Train the CAVP-style encoder of a `visual_encoder` section `cfg` on the train clips of `manifest`;
    returns (EMA model, final losses) on rank 0, None elsewhere. `code` is the stage's code identity."""
    model_cfg = cavp_config(cfg.frame_rate, clip.sample_rate, cfg.cavp.embed_dim)
    rows = load_manifest(manifest, "train").to_dict("records")
    store, kept = open_train_clips(
        rows, model_cfg, clip.duration, cfg.trainer.num_workers, cfg.trainer.in_memory_mb
    )
    report_decoded("train", len(store), kept.rejected, store.how)
    if len(store) < cfg.trainer.batch_size:
        raise ConfigError(
            f"{len(store)} usable training clips, fewer than visual_encoder.trainer.batch_size={cfg.trainer.batch_size}"
        )

    def stream(spec):
        what = "visual_encoder.trainer.batch_size"
        return ClipBatches(store, spec.batch_size, spec.rank, spec.world_size, spec.seed, what)

    sections = {
        "visual_encoder": cfg.model_dump(mode="json"),
        "clip": clip.model_dump(mode="json"),
        "code": code,  # changed code never resumes a checkpoint of the old one
    }
    seed_everything(cfg.trainer.seed)  # before building the model: the same initial weights every run
    objective = CAVPObjective(CAVP(model_cfg))
    trainer = Trainer(
        objective,
        cavp_loss,
        stream,
        cfg.trainer,
        run_dir(checkpoints, "visual_encoder", sections),
        tracker,
        stage_config={**sections, "cavp": model_cfg.to_dict()},
    )
    result = trainer.fit()
    if not trainer.dist.is_main:
        return None
    return result.ema.model, result.losses  # the EMA weights are the ones evaluated and shipped
