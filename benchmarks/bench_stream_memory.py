"""Peak memory of a clip-training stage against the size of the train split: streamed clips against clips in memory.

    python benchmarks/bench_stream_memory.py [--stage audio_vae|evaluators] [--train 256] [--scale 4] [--steps 20]
                                             [--work DIR]

Renders the default synthetic world's clips (2 s, 16 kHz audio, 64 px video) with `--train` and `--scale` × `--train`
train clips, prepares both, then trains the stage (`audio_vae`: the small WaveVAE; `evaluators`: the three proxy
evaluators, then their calibration on the 8 test clips) for `--steps` steps on each, once streamed
(`trainer.in_memory_mb: 0`) and once in memory, each in a fresh process, and prints every run's peak resident set
size (the child's `ru_maxrss`) and the ratio of the large world's to the small world's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {"streamed": 0.0, "in memory": 1e9}


def _params(train: int, steps: int, in_memory_mb: float, stage: str = "audio_vae"):
    from vaflow import config

    return config.validate(
        {
            "synth": {"clips_per_split": {"train": train, "val": 4, "test": 8}},
            "prepare": {"verify": "probe"},
            stage: {"mode": "train", "trainer": {"steps": steps, "in_memory_mb": in_memory_mb}},
        }
    )


def _prepare(train: int, root: Path) -> Path:
    from vaflow.data import prepare, sources

    params = _params(train, 1, 0)
    if not (root / "prepared" / "manifest.csv").is_file():
        items = sources.synth_items(params.synth, root / "prepared" / "synth", progress=False)
        prepare.prepare(items, params.clip, params.prepare, root / "prepared", progress=False)
    return root / "prepared"


class _NoTracker:
    def start_at(self, step: int) -> None: ...
    def log_metrics(self, metrics, step: int) -> None: ...
    def set_tags(self, tags) -> None: ...


def _child(stage: str, prepared: Path, train: int, steps: int, in_memory_mb: float, ckpt: Path) -> None:
    """Train `stage` in this process and print {"rss_mb", "seconds"} as one JSON line."""
    from vaflow.data.prepare import load_manifest
    from vaflow.train import evaluators, wavevae

    params = _params(train, steps, in_memory_mb, stage)
    start = time.perf_counter()
    if stage == "audio_vae":
        wavevae.train(params, load_manifest(prepared / "manifest.csv"), ckpt, _NoTracker(), None)
    else:
        evaluators.train_all(
            params.evaluators, params.clip, prepared, ckpt / "out", ckpt, "bench", _NoTracker()
        )
    seconds = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"rss_mb": rss_mb, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("audio_vae", "evaluators"), default="audio_vae")
    parser.add_argument(
        "--train", type=int, default=256, help="train clips of the small world (the default's)"
    )
    parser.add_argument("--scale", type=int, default=4, help="the large world has scale × train clips")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--work", type=Path, default=None, help="folder for the worlds (kept for reruns)")
    parser.add_argument(
        "--child", nargs=3, metavar=("PREPARED", "TRAIN", "IN_MEMORY_MB"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_stream_"))
    if args.child:
        prepared, train, mb = Path(args.child[0]), int(args.child[1]), float(args.child[2])
        _child(args.stage, prepared, train, args.steps, mb, Path(tempfile.mkdtemp(dir=work)))
        return
    sizes = [args.train, args.scale * args.train]
    worlds = {}
    for n in sizes:
        start = time.perf_counter()
        worlds[n] = _prepare(n, work / f"world-{n}")
        print(
            f"world of {n} train clips: {worlds[n]} ({time.perf_counter() - start:.0f} s to render and prepare)"
        )
    peak: dict[tuple[str, int], float] = {}
    for mode, mb in MODES.items():
        for n in sizes:
            cmd = [
                sys.executable,
                __file__,
                "--stage",
                args.stage,
                "--steps",
                str(args.steps),
                "--work",
                str(work),
            ]
            out = subprocess.run(
                [*cmd, "--child", str(worlds[n]), str(n), str(mb)], capture_output=True, text=True
            )
            if out.returncode:
                sys.exit(f"the {mode} run on {n} clips failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            peak[mode, n] = result["rss_mb"]
            print(
                f"{mode:>9}, {n:5d} train clips: peak RSS {result['rss_mb']:7.1f} MB, {result['seconds']:.1f} s"
            )
    small, large = sizes
    for mode in MODES:
        ratio = peak[mode, large] / peak[mode, small]
        print(f"{mode:>9}: peak RSS with {large} clips / with {small} clips = {ratio:.3f}")


if __name__ == "__main__":
    main()
