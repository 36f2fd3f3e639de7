"""The trainer on the paired shard stream (`pairs.ClipStream`): a run killed mid-pass and resumed trains on exactly
the batches of an uninterrupted run and ends bitwise equal to it, on each of two ranks.

One process plays rank r of 2 by building its stream with `rank=r, world=2` (what torchrun's RANK/WORLD_SIZE would
give it): the stream's draws depend on the rank, the trainer's replay of the stream's position does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train.toy import Crash, make_model, toy_data, toy_loss
from vaflow.config.trainer import TrainerConfig
from vaflow.data.pairs import FEATURES, ClipStream, open_split
from vaflow.data.shards import write_shards
from vaflow.train.numerics import seed_everything
from vaflow.train.trainer import Trainer

N_CLIPS = 40
STEPS, EVERY, CRASH = 14, 4, 11  # a pass is 5 batches: the step-8 checkpoint is 3 batches into pass 1


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """The toy regression data as 8 feature shards of 5 clips: `feat` (1, 7) holds x (6,) then y (1,)."""
    x, y = toy_data(N_CLIPS)
    root = tmp_path_factory.mktemp("toy_shards")
    ids = [f"s{i:02d}" for i in range(N_CLIPS)]

    def sample(clip_id: str) -> dict[str, np.ndarray]:
        i = int(clip_id[1:])
        return {"feat": torch.cat([x[i], y[i]])[None].numpy()}

    write_shards(root / "train", FEATURES, ids, sample, per_shard=5)
    return root


def _run(out: Path, shards: Path, rank: int, crash_at: int = 0):
    """Train (or resume) in `out`; returns (TrainResult or None when it crashed, ids of each step's batch)."""
    seen: list[list[str]] = []
    inner = toy_loss(noisy=True, crash_at=crash_at)

    def loss_fn(model, batch):
        seen.append(batch["id"])
        feat = batch["feat"][:, 0]
        return inner(model, (feat[:, :6], feat[:, 6:]))

    def stream(spec):
        return ClipStream(open_split(shards, "train"), spec.batch_size, rank=rank, world=2, seed=spec.seed,
                          shuffle_buffer=8)  # fmt: skip

    cfg = TrainerConfig(
        steps=STEPS, batch_size=4, lr=1e-2, warmup_steps=2, checkpoint_every=EVERY, log_every=1
    )
    seed_everything(cfg.seed)
    trainer = Trainer(make_model(), loss_fn, stream, cfg, out, stage_config={"toy": {"rank": rank}})
    try:
        return trainer.fit(), seen
    except Crash:
        return None, seen


@pytest.mark.parametrize("rank", [0, 1])
def test_killed_and_resumed_run_sees_the_uninterrupted_batches(tmp_path, shards, rank):
    full, want = _run(tmp_path / "full", shards, rank)
    crashed, _ = _run(tmp_path / "part", shards, rank, crash_at=CRASH)
    assert crashed is None
    resumed, got = _run(tmp_path / "part", shards, rank)
    resume_at = (CRASH - 1) // EVERY * EVERY
    assert resumed.resumed_from == resume_at and resumed.step == STEPS
    assert got == want[resume_at:]
    for name, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
