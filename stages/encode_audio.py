"""Stage `encode_audio`: every usable clip → WaveVAE posterior (mean, std) in shards, one shard set per split.

Outputs: `<out>/<split>/audio-%06d.tar` (samples `mean`, `std`: (T_a, D_a) float16, time-major; `meta`: id, label),
`<out>/<split>/rejected.csv` (id, reason) and `<out>/spec.json`. The output is persistent (`persist: true`), so a
killed run resumes: finished shards are kept, unless `spec.json` (VAE weights, clip geometry, per_shard, clip
policy, media) changed, in which case every old shard is deleted first. Under `torchrun` each rank writes its own
shards and encodes on its own GPU.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from vaflow import config
from vaflow.audio import encode
from vaflow.data import media
from vaflow.data.prepare import load_manifest
from vaflow.errors import exit_on_user_error
from vaflow.train.distributed import env_rank

SHARD_NAME = "audio"


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", required=True, help="the prepare stage's folder (manifest.csv)")
    parser.add_argument("--vae", required=True, help="the audio_vae stage's folder (wavevae.safetensors)")
    parser.add_argument("--out", required=True, help="output folder: <split>/audio-%%06d.tar, spec.json")
    args = parser.parse_args(argv)

    params = config.load(args.params)
    clip, cfg = params.clip, params.encode_audio
    media.ffmpeg_exe()  # no ffmpeg is a setup error, not a reason to reject every clip
    rank, world = env_rank()
    vae, vae_hash = encode.load_model(args.vae)
    if vae.config.sample_rate != clip.sample_rate:
        raise config.ConfigError(
            f"{args.vae}: the WaveVAE runs at {vae.config.sample_rate} Hz but clip.sample_rate is "
            f"{clip.sample_rate}: rerun the audio_vae stage (dvc repro audio_vae)"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    vae = vae.to(device).eval()

    manifest = load_manifest(Path(args.prepared) / "manifest.csv")
    out = Path(args.out)
    spec = encode.latent_spec(vae, vae_hash, clip, cfg.per_shard, manifest)
    if encode.reset_if_changed(out, spec):
        print(f"{out}: spec changed (VAE, clip, per_shard, policy or media): old shards deleted")

    t0 = time.perf_counter()
    total = 0
    for split in manifest["split"].drop_duplicates():
        rows = manifest[manifest["split"] == split]
        report = encode.encode_split(
            vae, rows, out / split, clip, cfg.batch_size, cfg.per_shard, rank, world, name=SHARD_NAME
        )
        total += report.encoded
        reasons = ", ".join(f"{k}: {n}" for k, n in sorted(report.reason_counts().items())) or "none"
        print(
            f"{split}: {len(rows)} clips; rank {rank}/{world} wrote {report.written} shard(s) "
            f"({report.encoded} clips), skipped {report.skipped} finished; rejected {len(report.rejected)} "
            f"({reasons})"
        )
    elapsed = time.perf_counter() - t0
    t_a = clip.latent_length(vae.hop)
    print(
        f"encoded {total} clips in {elapsed:.1f} s on {device} "
        f"(latents ({t_a}, {vae.latent_dim}) per clip, hash {vae_hash})"
    )


if __name__ == "__main__":
    main()
