"""Stage `encode_audio`: every usable clip → WaveVAE posterior (mean, std) in shards, one shard set per split.

Outputs: `<out>/<split>/audio-%06d.tar` (samples `mean`, `std`: (T_a, D_a) float16, time-major; `meta`: id, label),
`<out>/<split>/rejected.csv` (id, reason), `<out>/spec.json` and `metrics/encode_audio.json` (clips, encoded,
rejected, shards). The output is persistent (`persist: true`), so a killed run resumes: finished shards are kept,
unless the spec (VAE weights, clip geometry and policy, per_shard, this stage's code, each split's media) changed,
in which case what it invalidates is deleted first (vaflow/data/journal.py). Under `torchrun` each rank writes
its own shards and encodes on its own GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vaflow import config
from vaflow.code import code_hash, import_closure
from vaflow.data import latents as encode
from vaflow.data import media
from vaflow.data.extract import extract_split, finish_split, summary_metrics
from vaflow.data.journal import SPEC_FILE, SpecFolder
from vaflow.data.prepare import load_manifest
from vaflow.errors import exit_on_user_error
from vaflow.tracking import Tracker
from vaflow.train.distributed import barrier, init_distributed

STAGE = "encode_audio"
SHARD_NAME = "audio"


def encode_audio(params: config.Params, args: argparse.Namespace, tracker: Tracker) -> None:
    clip, cfg = params.clip, params.encode_audio
    media.ffmpeg_exe()  # no ffmpeg is a setup error, not a reason to reject every clip
    dist = init_distributed()
    vae, vae_hash = encode.load_model(args.vae)
    if vae.config.sample_rate != clip.sample_rate:
        raise config.ConfigError(
            f"{args.vae}: the WaveVAE runs at {vae.config.sample_rate} Hz but clip.sample_rate is "
            f"{clip.sample_rate}: rerun the audio_vae stage (dvc repro audio_vae)"
        )
    vae = vae.to(dist.device).eval()
    manifest = load_manifest(Path(args.prepared) / "manifest.csv")
    splits = {s: manifest[manifest["split"] == s] for s in manifest["split"].drop_duplicates()}
    code = code_hash(import_closure(__file__))
    folder = SpecFolder(args.out)
    cleared = folder.sync(encode.latent_spec(vae, vae_hash, clip, cfg.per_shard, splits, code))
    if cleared:
        print(f"{args.out}: the spec changed (VAE, clip, policy, per_shard, code or media): deleted "
              f"{', '.join(sorted(cleared))} ({sum(cleared.values())} files)")  # fmt: skip

    t0 = time.perf_counter()
    encoder = encode.LatentEncoder(vae, clip)
    for split, rows in splits.items():
        load = encode.AudioLoader(rows, clip, vae.hop)
        report = extract_split(rows["id"].tolist(), folder, split, SHARD_NAME, load, encoder, cfg.batch_size,
                               cfg.per_shard, dist.rank, dist.world_size, progress=sys.stderr.isatty())  # fmt: skip
        print(f"{split}: rank {dist.rank}/{dist.world_size} wrote {len(report.written)} shard(s) "
              f"({report.n_samples} clips), skipped {len(report.skipped)} finished")  # fmt: skip
    barrier()  # every rank's shards are finished before rank 0 sums up the splits
    if not dist.is_main:
        return
    summaries = [
        finish_split(folder, s, SHARD_NAME, rows["id"].tolist(), cfg.per_shard) for s, rows in splits.items()
    ]
    for summary in summaries:
        print(summary.line())
    seconds = time.perf_counter() - t0
    metrics = summary_metrics(summaries)
    # Wall-clock time goes to the MLflow run only: metrics/encode_audio.json must be the same on every run.
    tracker.set_tags(
        {"vae.weights": vae_hash, "code": code, "seconds": f"{seconds:.1f}", "device": dist.device}
    )
    tracker.log_final(metrics)
    tracker.log_artifact(folder.root / SPEC_FILE)
    print(f"encoded {metrics['encoded']} clips ({metrics['rejected']} rejected) in {seconds:.1f} s on "
          f"{dist.device}: latents ({encoder.t_a}, {vae.latent_dim}) per clip, VAE {vae_hash}")  # fmt: skip


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", required=True, help="the prepare stage's folder (manifest.csv)")
    parser.add_argument("--vae", required=True, help="the audio_vae stage's folder (wavevae.safetensors)")
    parser.add_argument("--out", required=True, help="output folder: <split>/audio-%%06d.tar, spec.json")
    parser.add_argument("--metrics", required=True, help="folder of metrics/encode_audio.json")
    args = parser.parse_args(argv)
    params = config.load(args.params)
    tracked = {STAGE: params.encode_audio, "clip": params.clip}
    with Tracker(STAGE, params=tracked, metrics_dir=args.metrics) as tracker:
        encode_audio(params, args, tracker)


if __name__ == "__main__":
    main()
