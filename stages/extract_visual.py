"""Stage `extract_visual`: every clip's window -> visual features (T_v, D_v) float16 in `<out>/<split>/visual-*.tar`,
in the manifest's clip order and with the same `per_shard` as the audio latents, so the two read together.

Everything about the encoder (kind, fps, input size, weights) comes from the encoder directory. Under torchrun each
rank writes its share of the shards; a rerun skips finished shards; shards written under another spec are deleted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vaflow import config
from vaflow.data.extract import extract_split
from vaflow.data.prepare import load_manifest
from vaflow.errors import exit_on_user_error
from vaflow.train.distributed import barrier, init_distributed
from vaflow.visual import extract as vx

# A manifest window may differ from clip.duration by container rounding only (prepare.DURATION_TOLERANCE).
WINDOW_TOLERANCE_S = 0.05


def check_windows(manifest, clip: config.ClipConfig) -> None:
    """Every clip must give the same T_v: its window must be clip.duration long."""
    off = manifest[(manifest["duration"] - clip.duration).abs() > WINDOW_TOLERANCE_S]
    if len(off):
        raise config.ConfigError(
            f"{len(off)} manifest windows are not clip.duration={clip.duration}s long (e.g. {off['id'].iloc[0]}: "
            f"{off['duration'].iloc[0]}s): rerun the prepare stage"
        )


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", required=True, help="prepare's output folder (manifest.csv)")
    parser.add_argument("--encoder", required=True, help="the visual_encoder stage's encoder directory")
    parser.add_argument("--out", required=True, help="feature folder: <split>/visual-%%06d.tar, spec.json")
    args = parser.parse_args(argv)

    params = config.load(args.params)
    ex, out = params.extract_visual, Path(args.out)
    dist = init_distributed()
    encoder = vx.load_encoder(args.encoder, device=dist.device)
    manifest = load_manifest(Path(args.prepared) / "manifest.csv")
    check_windows(manifest, params.clip)
    splits = {s: manifest[manifest["split"] == s] for s in config.SPLITS if (manifest["split"] == s).any()}
    num_frames = params.clip.n_frames(encoder.fps)
    identity = encoder.identity()
    spec = {
        "encoder": identity,
        "clip": params.clip.model_dump(mode="json"),
        "num_frames": num_frames,
        "per_shard": ex.per_shard,
        "splits": {
            s: {"clips": len(rows), "manifest": vx.manifest_digest(rows)} for s, rows in splits.items()
        },
    }
    if dist.is_main:
        for split, n in vx.sync_spec(out, spec).items():
            print(f"{split}: the feature spec changed, {n} stale shard(s) deleted")
        print(f"encoder {identity['kind']} {identity['model_name']} ({identity['weight_hash']}): "
              f"T_v={encoder.num_features(num_frames)} x D_v={identity['dim']} at {identity['fps']:g} fps")  # fmt: skip
    barrier()  # no rank writes before stale shards are gone

    encode = vx.FeatureEncoder(encoder, manifest)
    load = vx.FrameLoader(manifest, encoder, num_frames)
    for split, rows in splits.items():
        ids = rows["id"].tolist()
        split_dir = out / split
        t0 = time.perf_counter()
        report = extract_split(
            ids,
            split_dir,
            vx.FEATURE_NAME,
            vx.RejectionLog(load, split_dir, dist.rank),
            encode,
            ex.batch_size,
            ex.per_shard,
            rank=dist.rank,
            world=dist.world_size,
            progress=sys.stderr.isatty(),
        )
        seconds = time.perf_counter() - t0
        barrier()  # every rank's shards are finished before rank 0 sums up the split
        if not dist.is_main:
            continue
        rejected = vx.collect_rejected(split_dir, ids, ex.per_shard)
        vx.write_rejected(split_dir, rejected)
        print(f"{split}: {len(ids) - len(rejected)} clips in {len(vx.feature_shards(split_dir))} shards, "
              f"{len(rejected)} rejected; this run wrote {len(report.written)} shard(s) "
              f"({report.n_samples} clips on rank 0) in {seconds:.1f}s, skipped {len(report.skipped)}")  # fmt: skip
        for clip_id, reason in rejected:
            print(f"  rejected {clip_id}: {reason}")


if __name__ == "__main__":
    main()
