"""Data throughput: synthetic clips rendered and encoded per second, and decode speed against bare ffmpeg.

    python benchmarks/bench_data.py --clips 32

Prints clips/s for: rendering only; rendering + mp4 encode (one process); `synth.generate` with all
workers; decoding frames at 10 fps resized to 64 px + audio at 16 kHz as two ffmpeg runs (`media.read_frames` +
`media.read_audio`) and as the pipeline does (one run, `media.read_av`), and a bare `ffmpeg -i FILE -f null -`
decode of the same files; then the audio extraction (decode + a small WaveVAE with random weights) in clips/s with
0 and 2 threads decoding ahead of the encoder.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from vaflow.config import ClipConfig, SynthConfig
from vaflow.data import extract, latents, media, synth
from vaflow.data.journal import SpecFolder
from vaflow.models.wavevae import SIZES, build


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
    parser.add_argument("--extract-workers", type=int, nargs="+", default=[0, 2], help="decode-ahead threads")
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
            media.read_frames(p, 10, size=(64, 64), duration=cfg.duration)
            media.read_audio(p, 16000, duration=cfg.duration)
        two = time.perf_counter() - t0
        print(f"decode frames@10fps/64px + audio@16kHz, two ffmpeg runs   {_rate(n, two)}")
        t0 = time.perf_counter()
        for p in paths:
            media.read_av(p, 10, (64, 64), 16000, 0.0, cfg.duration)
        pipeline = time.perf_counter() - t0
        print(f"decode frames@10fps/64px + audio@16kHz, one run (read_av) {_rate(n, pipeline)}")

        exe = media.ffmpeg_exe()
        t0 = time.perf_counter()
        for p in paths:
            subprocess.run([exe, "-nostdin", "-v", "error", "-i", str(p), "-f", "null", "-"], check=True)
        bare = time.perf_counter() - t0
        print(f"decode bare `ffmpeg -f null`           {_rate(n, bare)}")
        print(f"two runs / bare ffmpeg: {two / bare:.2f}x the time")
        print(f"pipeline decode (read_av) / bare ffmpeg: {pipeline / bare:.2f}x the time")
        _extraction(paths, cfg, tmp, args.extract_workers)


def _extraction(paths: list[Path], cfg: SynthConfig, tmp: Path, workers: list[int]) -> None:
    """encode_audio's extraction (decode + the small WaveVAE, random weights) of `paths`, at each decode-ahead
    thread count: clips/s."""
    torch.manual_seed(0)
    clip = ClipConfig(duration=cfg.duration, sample_rate=cfg.sample_rate)
    vae = build(dataclasses.replace(SIZES["small"], sample_rate=cfg.sample_rate)).eval()
    rows = pd.DataFrame(
        {"id": [p.stem for p in paths], "path": [str(p) for p in paths], "start": 0.0, "label": ""}
    )
    load, encode = latents.AudioLoader(rows, clip, vae.hop), latents.LatentEncoder(vae, clip)
    ids = rows["id"].tolist()
    for n in workers:
        folder = SpecFolder(tmp / f"extract-{n}")
        folder.sync({"bench": n})
        t0 = time.perf_counter()
        extract.extract_split(ids, folder, "train", "audio", load, encode, 16, 256, progress=False, workers=n)
        print(f"encode_audio extraction, {n} decode thread(s)   {_rate(len(ids), time.perf_counter() - t0)}")


if __name__ == "__main__":
    main()
