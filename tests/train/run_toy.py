"""Train the toy model through the Trainer; launched by the tests as `python run_toy.py …` or under torchrun,
and imported by them (`train_toy`) for in-process reference runs.

Writes `<out>/history.json` (logged step metrics) and `<out>/final.pt` (model and EMA weights) on rank 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: `vaflow` and `tests.train.toy`

from tests.train.toy import ToyStream, make_model, toy_loss  # noqa: E402
from vaflow.config.trainer import TrainerConfig
from vaflow.train.interface import StreamSpec, TrainResult  # noqa: E402
from vaflow.train.numerics import seed_everything  # noqa: E402
from vaflow.train.trainer import Trainer  # noqa: E402


def train_toy(
    out: Path,
    steps: int = 20,
    batch: int = 8,
    accum: int = 1,
    checkpoint_every: int = 5,
    log_every: int = 1,
    sleep: float = 0.0,
    noisy: bool = False,
) -> TrainResult:
    """One toy training run with checkpoints in `<out>/ckpt`."""
    cfg = TrainerConfig(
        steps=steps,
        batch_size=batch,
        grad_accum=accum,
        lr=1e-2,
        warmup_steps=3,
        schedule="cosine",
        ema_decay=0.9,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
    )
    seed_everything(cfg.seed)
    model = make_model()

    def stream(spec: StreamSpec) -> ToyStream:
        return ToyStream(spec.rank, spec.world_size, spec.batch_size)

    loss_fn = toy_loss(noisy=noisy, sleep=sleep)
    trainer = Trainer(model, loss_fn, stream, cfg, out / "ckpt", stage_config={"toy": {"width": 32}})
    result = trainer.fit()
    if trainer.dist.is_main:
        (out / "history.json").write_text(
            json.dumps({"resumed_from": result.resumed_from, "history": result.history})
        )
        torch.save({"model": result.model.state_dict(), "ema": result.ema.state_dict()}, out / "final.pt")
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--checkpoint-every", type=int, default=5)
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--noisy", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)  # bitwise-reproducible CPU maths across processes, no oversubscription
    train_toy(**vars(args))


if __name__ == "__main__":
    main()
