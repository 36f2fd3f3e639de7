"""The micro world the evaluation tests share: prepared once per module, with evaluators trained on it."""

from __future__ import annotations

from pathlib import Path

from tests.world import micro_world
from vaflow import config
from vaflow.data.prepare import load_manifest

# 2 clips of each of the 8 classes to train on; the evaluators see 8 frames.
WORLD = micro_world(train=16, test=8)


def evaluators_settings(**trainer) -> config.EvaluatorsConfig:
    """The default `evaluators` section with its trainer's keys `trainer` changed."""
    base = config.EvaluatorsConfig()
    return base.model_copy(update={"trainer": base.trainer.model_copy(update=trainer)})


# A short training: 32 steps of 8 clips, enough for every evaluator to fit the 16 training clips in a few seconds.
FAST = evaluators_settings(steps=32, batch_size=8, checkpoint_every=32, log_every=8)


def rows(world: Path, split: str) -> list[dict]:
    """The manifest rows of `split` in the prepared folder `world`."""
    return load_manifest(world / "manifest.csv", split).to_dict("records")
