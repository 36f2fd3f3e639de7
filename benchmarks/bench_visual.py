"""Visual-feature throughput on CPU: frames per second of each encoder kind, and CAVP training speed.

    python benchmarks/bench_visual.py --frames 64 --repeats 3

Prints frames/s (median and best of `repeats` timed runs after one warm-up) for:
- clip: open_clip ViT-B-32 at 224 px with RANDOM weights (built with `open_clip.create_model("ViT-B-32")`,
  nothing loaded or downloaded). Speed does not depend on the weight values; the features are meaningless.
- cavp: the default CAVPConfig model (64 px frames, 4 fps), randomly initialised, via CAVPEncoder.
- pixels: the default PixelEncoder (64 px frames area-pooled to 8x8).
- cavp-train: CAVP loss + backward + Adam step on 2 s clips (64 px, 16 kHz), in clips/s and seconds per epoch
  of 256 clips (the size of the embedded default's training split).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from vaflow.models.encoders import CAVP, CAVPEncoder, CLIPEncoder, PixelEncoder


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median and best wall time of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def _report(name: str, n: int, unit: str, times: tuple[float, float]) -> None:
    median, best = times
    print(
        f"{name:<34} {n / median:9.1f} {unit}/s median  {n / best:9.1f} {unit}/s best  ({1000 * median / n:7.2f} ms/{unit})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64, help="frames per timed call (one clip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-batch", type=int, default=32, help="clips per CAVP training step")
    parser.add_argument(
        "--skip-clip", action="store_true", help="skip ViT-B-32 (builds a 150M-parameter model)"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, {args.frames} frames per call")

    if not args.skip_clip:
        import open_clip

        # Random weights: for speed only. Real extraction loads weights through CLIPEncoder(weights=...).
        model = open_clip.create_model("ViT-B-32", pretrained=None, pretrained_text=False)
        clip = CLIPEncoder.from_model(model, "ViT-B-32 (random weights, speed only)", batch_size=32)
        frames = rng.integers(0, 256, (1, args.frames, *clip.input_size, 3), dtype=np.uint8)
        _report(
            "clip ViT-B-32 224px (random w.)",
            args.frames,
            "frame",
            _time(lambda: clip.encode_batch(frames), args.repeats),
        )

    cavp = CAVPEncoder.from_model(CAVP())
    frames = rng.integers(0, 256, (1, args.frames, *cavp.input_size, 3), dtype=np.uint8)
    _report(
        f"cavp default {cavp.input_size[0]}px (random init)",
        args.frames,
        "frame",
        _time(lambda: cavp.encode_batch(frames), args.repeats),
    )

    pixels = PixelEncoder()
    frames = rng.integers(0, 256, (1, args.frames, *pixels.input_size, 3), dtype=np.uint8)
    _report(
        f"pixels {pixels.model_name} {pixels.input_size[0]}px",
        args.frames,
        "frame",
        _time(lambda: pixels.encode_batch(frames), args.repeats),
    )

    # CAVP training step on 2 s clips at the default config (4 fps -> 8 frames, 16 kHz audio).
    model = CAVP()
    c = model.config
    seconds = 2.0
    clips = torch.from_numpy(
        rng.integers(
            0, 256, (args.train_batch, round(seconds * c.fps), c.image_size, c.image_size, 3), dtype=np.uint8
        )
    )
    mel = model.log_mel(torch.randn(args.train_batch, round(seconds * c.sample_rate)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        total, _ = model.loss(clips, mel)
        opt.zero_grad()
        total.backward()
        opt.step()

    times = _time(step, args.repeats)
    _report(f"cavp-train 2 s clips, batch {args.train_batch}", args.train_batch, "clip", times)
    print(f"{'':<34} {256 * times[0] / args.train_batch:9.1f} s per epoch of 256 clips (median)")


if __name__ == "__main__":
    main()
