"""Stage `extract_visual`: every clip's window -> visual features (T_v, D_v) float16 in `<out>/<split>/visual-*.tar`,
in the manifest's clip order and with the same `per_shard` as the audio latents, so the two read together; plus
`<out>/<split>/rejected.csv` (id, reason), `<out>/spec.json` and `metrics/extract_visual.json`.

Everything about the encoder (kind, fps, input size, weights) comes from the encoder directory. Under torchrun each
rank writes its share of the shards; a rerun skips finished shards; what a changed spec (encoder, clip, per_shard,
this stage's code, a split's media) invalidates is deleted first (vaflow/data/journal.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vaflow import config
from vaflow.code import code_hash, import_closure
from vaflow.data import features as vx
from vaflow.data.extract import extract_split, finish_split, summary_metrics
from vaflow.data.journal import SPEC_FILE, SpecFolder
from vaflow.data.prepare import load_manifest
from vaflow.errors import exit_on_user_error
from vaflow.tracking import Tracker
from vaflow.train.distributed import barrier, init_distributed

STAGE = "extract_visual"
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


def extract_visual(params: config.Params, args: argparse.Namespace, tracker: Tracker) -> None:
    ex = params.extract_visual
    dist = init_distributed()
    encoder = vx.load_encoder(args.encoder, device=dist.device)
    manifest = load_manifest(Path(args.prepared) / "manifest.csv")
    check_windows(manifest, params.clip)
    splits = {s: manifest[manifest["split"] == s] for s in config.SPLITS if (manifest["split"] == s).any()}
    num_frames = params.clip.n_frames(encoder.fps)
    code = code_hash(import_closure(__file__))
    folder = SpecFolder(args.out)
    cleared = folder.sync(vx.feature_spec(encoder, params.clip, num_frames, ex.per_shard, splits, code))
    for entry, n in sorted(cleared.items()):  # printed by the one rank that found the spec changed
        print(f"{entry}: the feature spec changed, {n} stale file(s) deleted")
    identity = encoder.identity()
    if dist.is_main:
        print(f"encoder {identity['kind']} {identity['model_name']} ({identity['weight_hash']}): "
              f"T_v={encoder.num_features(num_frames)} x D_v={identity['dim']} at {identity['fps']:g} fps")  # fmt: skip

    t0 = time.perf_counter()
    encode = vx.FeatureEncoder(encoder, manifest)
    load = vx.FrameLoader(manifest, encoder, num_frames)
    for split, rows in splits.items():
        report = extract_split(rows["id"].tolist(), folder, split, vx.FEATURE_NAME, load, encode, ex.batch_size,
                               ex.per_shard, dist.rank, dist.world_size, progress=sys.stderr.isatty())  # fmt: skip
        print(f"{split}: rank {dist.rank}/{dist.world_size} wrote {len(report.written)} shard(s) "
              f"({report.n_samples} clips), skipped {len(report.skipped)} finished")  # fmt: skip
    barrier()  # every rank's shards are finished before rank 0 sums up the splits
    if not dist.is_main:
        return
    summaries = [
        finish_split(folder, s, vx.FEATURE_NAME, rows["id"].tolist(), ex.per_shard)
        for s, rows in splits.items()
    ]
    for summary in summaries:
        print(summary.line())
        for clip_id, reason in summary.rejected:
            print(f"  rejected {clip_id}: {reason}")
    seconds = time.perf_counter() - t0
    # Wall-clock time goes to the MLflow run only: metrics/extract_visual.json must be the same on every run.
    tracker.set_tags({"encoder.kind": identity["kind"], "encoder.weights": identity["weight_hash"], "code": code,
                      "seconds": f"{seconds:.1f}", "device": dist.device})  # fmt: skip
    tracker.log_final(summary_metrics(summaries))
    tracker.log_artifact(folder.root / SPEC_FILE)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", required=True, help="prepare's output folder (manifest.csv)")
    parser.add_argument("--encoder", required=True, help="the visual_encoder stage's encoder directory")
    parser.add_argument("--out", required=True, help="feature folder: <split>/visual-%%06d.tar, spec.json")
    parser.add_argument("--metrics", required=True, help="folder of metrics/extract_visual.json")
    args = parser.parse_args(argv)
    params = config.load(args.params)
    tracked = {STAGE: params.extract_visual, "clip": params.clip}
    with Tracker(STAGE, params=tracked, metrics_dir=args.metrics) as tracker:
        extract_visual(params, args, tracker)


if __name__ == "__main__":
    main()
