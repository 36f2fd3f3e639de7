"""Train a tiny CAVP through the Trainer on synthetic tensors; launched by tests/train/test_cavp_ranks.py under
torchrun, and imported by it (`train_cavp`) for the in-process reference run.

Writes `<out>/history.json` (logged step metrics) and `<out>/final.pt` (model weights) on rank 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: `vaflow`

from vaflow.config.trainer import TrainerConfig  # noqa: E402
from vaflow.data.clips import ClipBatches  # noqa: E402
from vaflow.models.cavp import CAVP, CAVPConfig  # noqa: E402
from vaflow.train.cavp import CAVPObjective, cavp_loss  # noqa: E402
from vaflow.train.interface import StreamSpec, TrainResult  # noqa: E402
from vaflow.train.numerics import seed_everything  # noqa: E402
from vaflow.train.trainer import Trainer  # noqa: E402

# 2 s clips at 4 fps (8 frames, 16 px) and 8 kHz audio (hop 100: 161 mel frames, 20 per video frame): a model of
# ~6k weights, a step in milliseconds.
TINY = CAVPConfig(
    fps=4.0,
    image_size=16,
    sample_rate=8000,
    n_mels=16,
    hop=100,
    n_fft=256,
    video_channels=(4, 8),
    audio_channels=(4, 8),
    width=16,
    embed_dim=8,
    temporal_layers=1,
)
N_CLIPS, N_FRAMES, N_MEL_FRAMES = 16, 8, 161


def synthetic_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random clips: frames (16, 8, 16, 16, 3) uint8, log-mel (16, 16, 161) float32 — the same on every rank."""
    g = torch.Generator().manual_seed(seed)
    size = TINY.image_size
    frames = torch.randint(0, 256, (N_CLIPS, N_FRAMES, size, size, 3), generator=g, dtype=torch.uint8)
    mel = torch.randn(N_CLIPS, TINY.n_mels, N_MEL_FRAMES, generator=g)
    return {"frames": frames, "mel": mel}


def train_cavp(out: Path, steps: int = 4, batch: int = 8, global_negatives: bool = True) -> TrainResult:
    """One CAVP training run at global batch `batch` (two passes of the 16 clips at 4 steps of 8)."""
    cfg = TrainerConfig(
        steps=steps,
        batch_size=batch,
        lr=3e-3,
        warmup_steps=1,
        schedule="cosine",
        ema_decay=0.9,
        checkpoint_every=steps,
        log_every=1,
    )
    tensors = synthetic_tensors()

    def stream(spec: StreamSpec) -> ClipBatches:
        return ClipBatches(tensors, spec.batch_size, spec.rank, spec.world_size, spec.seed)

    seed_everything(cfg.seed)  # the same initial weights in every process
    objective = CAVPObjective(CAVP(TINY), global_negatives=global_negatives)
    trainer = Trainer(objective, cavp_loss, stream, cfg, out / "ckpt", stage_config={"cavp": TINY.to_dict()})
    result = trainer.fit()
    if trainer.dist.is_main:
        (out / "history.json").write_text(json.dumps({"history": result.history}))
        torch.save({"model": result.model.state_dict()}, out / "final.pt")
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True, type=Path, help="<out>/global and <out>/local get one run each")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(1)  # bitwise-reproducible CPU maths across processes, no oversubscription
    # Both variants in one launch: one torchrun start-up (the slow part) instead of two.
    train_cavp(args.out / "global", args.steps, args.batch, global_negatives=True)
    train_cavp(args.out / "local", args.steps, args.batch, global_negatives=False)


if __name__ == "__main__":
    main()
