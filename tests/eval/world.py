"""The micro world the evaluation tests share: prepared once per module, with evaluators trained on it."""

from __future__ import annotations

from pathlib import Path

from tests.world import micro_world
from vaflow import config
from vaflow.data.prepare import load_manifest

# 2 clips of each of the 8 classes to train on; the evaluators see 8 frames.
WORLD = micro_world(train=16, test=8)
# A short training: enough for every evaluator to fit the 16 training clips, a few seconds in all.
FAST = config.EvaluatorsConfig(epochs=16, batch_size=8)


def rows(world: Path, split: str) -> list[dict]:
    """The manifest rows of `split` in the prepared folder `world`."""
    return load_manifest(world / "manifest.csv", split).to_dict("records")
