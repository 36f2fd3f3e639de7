"""Data throughput: synthetic clips rendered and encoded per second, and decode speed against bare ffmpeg.

    python benchmarks/bench_data.py --clips 32

Prints clips/s for: rendering only; rendering + mp4 encode (one process); `synth.generate` with all
workers; decoding as the pipeline does (frames at 10 fps resized to 64 px + audio at 16 kHz via
`media.read_frames` + `media.read_audio`), and a bare `ffmpeg -i FILE -f null -` decode of the same files.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from vaflow.config import SynthConfig
from vaflow.data import media, synth


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:8.1f} clips/s  ({1000 * seconds / n:6.1f} ms/clip)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32, help="clips per measurement")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fps", type=int, default=20)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument(
        "--workers", type=int, default=0, help="processes for the generate run (0 = one per core)"
    )
    args = parser.parse_args()

    cfg = SynthConfig(
        clips_per_split={"train": args.clips},
        size=args.size,
        fps=args.fps,
        duration=args.duration,
        workers=args.workers,
    )
    n = args.clips
    print(
        f"synthetic world: {n} clips of {cfg.duration} s, {cfg.size}x{cfg.size} px, {cfg.fps} fps, {cfg.sample_rate} Hz"
    )
    print(f"cores: {os.cpu_count()}")

    with tempfile.TemporaryDirectory(prefix="vaflow-bench-") as tmp:
        tmp = Path(tmp)
        synth.render_clip(cfg, "train", 0)  # warm-up: imports, grid caches

        t0 = time.perf_counter()
        clips = [synth.render_clip(cfg, "train", i) for i in range(n)]
        print(f"render only      (1 process)   {_rate(n, time.perf_counter() - t0)}")

        t0 = time.perf_counter()
        for clip in clips:
            clip = synth.render_clip(cfg, "train", int(clip.id[-6:]))
            media.write_video(tmp / f"{clip.id}.mp4", clip.frames, cfg.fps, clip.audio, cfg.sample_rate)
        print(f"render + encode  (1 process)   {_rate(n, time.perf_counter() - t0)}")

        workers = cfg.workers or os.cpu_count() or 1
        t0 = time.perf_counter()
        index = synth.generate(cfg, tmp / "world", progress=False)
        print(f"generate         ({workers} workers)   {_rate(n, time.perf_counter() - t0)}")

        paths = [tmp / "world" / p for p in index["path"]]
        t0 = time.perf_counter()
        for p in paths:
            media.read_frames(p, 10, size=(64, 64))
            media.read_audio(p, 16000)
        pipeline = time.perf_counter() - t0
        print(f"decode frames@10fps/64px + audio@16kHz   {_rate(n, pipeline)}")

        exe = media.ffmpeg_exe()
        t0 = time.perf_counter()
        for p in paths:
            subprocess.run([exe, "-nostdin", "-v", "error", "-i", str(p), "-f", "null", "-"], check=True)
        bare = time.perf_counter() - t0
        print(f"decode bare `ffmpeg -f null`           {_rate(n, bare)}")
        print(f"pipeline decode / bare ffmpeg: {pipeline / bare:.2f}x the time")


if __name__ == "__main__":
    main()
