"""The reconstruction floor of the synthetic world: test log-mel L1 between each test clip and its twin, the same
clip rendered with another draw of its white noise floor (−60 dBFS).

    python benchmarks/mel_floor.py [--params params.yaml] [--split test]

A WaveVAE compresses 16 kHz audio to 62.5 latent frames of 16 channels per second (the `small` size): it can keep
every tone and event of a clip but not the sample values of its noise floor, so the best reconstruction it can give
is, at most, as close as such a twin. The figure is the same log-mel L1 as `metrics/audio_vae.json`'s
`test_mel_l1` (vaflow.eval.losses.MelL1Loss), overall and per class, and it is a floor that ignores the other
noises of the world (the orb's breath, the rain's hiss and grains, the bird's grains are drawn from the object's
own stream and stay the same in the twin), so a real VAE's floor is higher. Both renders are the raw waveforms (no
AAC round trip). Rendering is deterministic: the figure is the same on every machine.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch

from vaflow import config
from vaflow.data.synth import render_clip
from vaflow.eval.losses import MelL1Loss


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    cfg = config.load(args.params).synth
    mel = MelL1Loss(cfg.sample_rate)
    per_class: dict[str, list[float]] = defaultdict(list)
    for index in range(cfg.clips_per_split[args.split]):
        clip = render_clip(cfg, args.split, index)
        twin = render_clip(cfg, args.split, index, floor_draw=1)
        x, y = torch.from_numpy(clip.audio)[None], torch.from_numpy(twin.audio)[None]  # (1, N) each
        per_class[clip.label].append(float((mel.log_mel(y) - mel.log_mel(x)).abs().mean()))
    values = [v for vs in per_class.values() for v in vs]
    print(
        f"{args.split}: {len(values)} clips, log-mel L1 clip vs twin (noise floor redrawn): {np.mean(values):.4f}"
    )
    for label, vs in sorted(per_class.items()):
        print(f"  {label:10s} {np.mean(vs):.4f}  ({len(vs)} clips)")


if __name__ == "__main__":
    main()
