"""The micro synthetic world the tests build: 1 s clips at 8 kHz, 32 px, 10 fps (a few seconds of ffmpeg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vaflow import config
from vaflow.data import prepare, sources


def micro_world(**clips_per_split: int) -> dict[str, Any]:
    """The params of a micro world with `clips_per_split` (train=…, test=…) clips of the 8 classes."""
    return {
        "clip": {"duration": 1.0, "sample_rate": 8000},
        "synth": {
            "clips_per_split": clips_per_split,
            "size": 32,
            "fps": 10,
            "duration": 1.0,
            "sample_rate": 8000,
            "workers": 1,
        },  # fmt: skip
        "prepare": {"verify": "probe", "workers": 1},
        "audio_vae": {"mode": "train", "checkpoint": ""},  # an 8 kHz world: no pretrained 16 kHz codec
    }


def prepare_world(data: dict[str, Any], root: Path) -> Path:
    """Render the world `data` describes and prepare it under `root`; returns the prepared folder."""
    params = config.validate(data)
    items = sources.synth_items(params.synth, root / "prepared" / "synth", progress=False)
    prepare.prepare(items, params.clip, params.prepare, root / "prepared", progress=False)
    return root / "prepared"
