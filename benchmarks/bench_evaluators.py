"""Reference evaluators' throughput: clips per second of each one's whole path (waveform or frames in, the features
a metric reads out), on the CPU and on a GPU when there is one.

    python benchmarks/bench_evaluators.py --clips 4 --repeats 2 [--device cuda] [--only passt melception]

Each network is built at its official size with RANDOM weights (no weight file is read; speed does not depend on
the values, the features are meaningless). Audio: `--seconds` of noise per clip at the evaluator's own rate (each
pads or cuts it to its window). Video: 0.5 fps frames at 360x640 for ImageBind, 25 fps for Synchformer. Prints the
median and best of `--repeats` timed runs after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from vaflow.models.reference import difffoley, imagebind, melception, panns, passt, synchformer


def _random(model: torch.nn.Module, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return model.to(device).eval()


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    with torch.inference_mode():
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def cases(n: int, seconds: float, device: str) -> dict[str, Callable[[], Callable[[], object]]]:
    """Evaluator -> a builder of the timed call (building is not timed)."""

    def wav(rate: int) -> torch.Tensor:
        return 0.1 * torch.randn(n, int(seconds * rate), device=device)

    def frames(fps: float) -> torch.Tensor:
        return torch.randint(
            0, 256, (n, max(2, int(fps * seconds)), 3, 360, 640), dtype=torch.uint8, device=device
        )

    def ib_audio():
        m, w = _random(imagebind.ImageBind(imagebind.HUGE), device), wav(imagebind.SAMPLE_RATE)
        return lambda: imagebind.audio_features(m, w)

    def ib_video():
        m, f = _random(imagebind.ImageBind(imagebind.HUGE), device), frames(imagebind.FRAME_RATE)
        return lambda: imagebind.vision_features(m, f)

    def sync_audio():
        m, w = _random(synchformer.build(device), device), wav(synchformer.SAMPLE_RATE)
        return lambda: m.afeats(synchformer.fit_audio(w))

    def sync_video():
        m, f = _random(synchformer.build(device), device), frames(synchformer.VIDEO_FPS)
        return lambda: m.vfeats(synchformer.fit_frames(f))

    def acc():
        m, w = _random(difffoley.build(), device), wav(difffoley.SAMPLE_RATE)
        v = torch.randn(n, 32, 512, device=device)
        return lambda: m.probability(w, v, generator=torch.Generator(device).manual_seed(0))

    return {
        "passt": lambda: (lambda m, w: lambda: m.features(w))(
            _random(passt.PaSST(), device), wav(passt.SAMPLE_RATE)
        ),
        "melception": lambda: (lambda m, w: lambda: m.features(w))(
            _random(melception.Melception(), device), wav(melception.SAMPLE_RATE)
        ),
        "panns": lambda: (lambda m, w: lambda: m.features(w))(
            _random(panns.Cnn14(), device), wav(panns.SAMPLE_RATE)
        ),
        "imagebind-audio": ib_audio,
        "imagebind-video": ib_video,
        "synchformer-audio": sync_audio,
        "synchformer-video": sync_video,
        "sync_classifier": acc,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=4, help="clips per call (one batch)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length in seconds")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="*", help="evaluators to time (default: all)")
    args = parser.parse_args()
    print(
        f"device {args.device}, torch threads {torch.get_num_threads()}, {args.clips} clips of {args.seconds:g} s"
    )
    for name, build in cases(args.clips, args.seconds, args.device).items():
        if args.only and name not in args.only:
            continue
        median, best = _time(build(), args.repeats)
        print(
            f"{name:18s} {args.clips / median:8.2f} clips/s (median {median:.2f} s, best {best:.2f} s per call)"
        )


if __name__ == "__main__":
    main()
