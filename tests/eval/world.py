"""The micro world the evaluation tests share: prepared once per module, with evaluators trained on it."""

from __future__ import annotations

from pathlib import Path

from vaflow import config
from vaflow.data.prepare import load_manifest

# A micro world: 2 clips of each of the 8 classes to train on, 1 s at 8 kHz, 32 px; the evaluators see 8 frames.
WORLD = {
    "clip": {"duration": 1.0, "sample_rate": 8000},
    "synth": {
        "clips_per_split": {"train": 16, "test": 8},
        "size": 32,
        "fps": 10,
        "duration": 1.0,
        "sample_rate": 8000,
        "workers": 1,
    },
    "prepare": {"verify": "probe", "workers": 1},
    "audio_vae": {"mode": "train", "checkpoint": ""},  # an 8 kHz world: no pretrained 16 kHz codec
}
# A short training: enough for every evaluator to fit the 16 training clips, a few seconds in all.
FAST = config.EvaluatorsConfig(epochs=16, batch_size=8)


def rows(world: Path, split: str) -> list[dict]:
    """The manifest rows of `split` in the prepared folder `world`."""
    return load_manifest(world / "manifest.csv", split).to_dict("records")
