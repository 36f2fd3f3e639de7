"""Stage `encode_audio`: every usable clip → WaveVAE posterior (mean, std: (T_a, D_a) float16) in shards
`<out>/<split>/audio-%06d.tar`, one set per split, with `rejected.csv` and `spec.json`. A killed run resumes: finished
shards are kept unless the spec changed (vaflow/data/journal.py). Under `torchrun` each rank encodes its own shards."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vaflow import config
from vaflow.code import stage_code
from vaflow.data import extract, media
from vaflow.data import latents as encode
from vaflow.data.journal import SPEC_FILE, SpecFolder
from vaflow.data.prepare import load_manifest
from vaflow.models.wavevae import load_model
from vaflow.stage import Stage, run
from vaflow.tracking import Tracker
from vaflow.train.distributed import barrier, init_distributed

STAGE = Stage(
    "encode_audio",
    __doc__,
    {
        "--prepared": "the prepare stage's folder (manifest.csv)",
        "--vae": "the audio_vae stage's folder (wavevae.safetensors)",
        "--out": "output folder: <split>/audio-%%06d.tar, spec.json",
        "--metrics": "folder of metrics/encode_audio.json",
    },
    tracked=("encode_audio", "clip"),
)
SHARD_NAME = "audio"


def encode_audio(params: config.Params, args: argparse.Namespace, tracker: Tracker) -> None:
    """Encode this rank's share of every split, then (rank 0) sum the splits up into rejected lists and metrics."""
    clip, cfg = params.clip, params.encode_audio
    media.ffmpeg_exe()  # no ffmpeg is a setup error, not a reason to reject every clip
    dist = init_distributed()
    vae, vae_hash = load_model(args.vae)
    if vae.config.sample_rate != clip.sample_rate:
        raise config.ConfigError(
            f"{args.vae}: the WaveVAE runs at {vae.config.sample_rate} Hz but clip.sample_rate is "
            f"{clip.sample_rate}: rerun the audio_vae stage (dvc repro audio_vae)"
        )
    vae = vae.to(dist.device).eval()
    manifest = load_manifest(Path(args.prepared) / "manifest.csv")
    splits = extract.manifest_splits(manifest)
    code = stage_code(__file__)
    folder = SpecFolder(args.out)
    extract.sync_spec(folder, encode.latent_spec(vae, vae_hash, clip, cfg.per_shard, splits, code), "latent")

    t0 = time.perf_counter()
    encoder = encode.LatentEncoder(vae, clip)
    load = encode.AudioLoader(manifest, clip, vae.hop)
    extract.extract_splits(splits, folder, SHARD_NAME, load, encoder, cfg.batch_size, cfg.per_shard, dist.rank,
                           dist.world_size, cfg.workers)  # fmt: skip
    barrier()  # every rank's shards are finished before rank 0 sums up the splits
    if not dist.is_main:
        return
    metrics = extract.summary_metrics(extract.finish_splits(folder, splits, SHARD_NAME, cfg.per_shard))
    seconds = time.perf_counter() - t0
    # Wall-clock time goes to the MLflow run only: metrics/encode_audio.json must be the same on every run.
    tracker.set_tags(
        {"vae.weights": vae_hash, "code": code, "seconds": f"{seconds:.1f}", "device": dist.device}
    )
    tracker.log_final(metrics)
    tracker.log_artifact(folder.root / SPEC_FILE)
    print(f"encoded {metrics['encoded']} clips ({metrics['rejected']} rejected) in {seconds:.1f} s on "
          f"{dist.device}: latents ({encoder.t_a}, {vae.latent_dim}) per clip, VAE {vae_hash}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Run the stage (flags as in dvc.yaml)."""
    run(STAGE, encode_audio, argv)


if __name__ == "__main__":
    main()
