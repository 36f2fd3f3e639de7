"""Stage `extract_visual`: every clip's window -> visual features (T_v, D_v) float16 in `<out>/<split>/visual-*.tar`,
in the manifest's clip order and with the same `per_shard` as the audio latents, so the two read together; plus
`<out>/<split>/rejected.csv` (id, reason), `<out>/spec.json` and `metrics/extract_visual.json`.

Everything about the encoder (kind, fps, input size, weights) comes from the encoder directory. Under torchrun each
rank writes its share of the shards; a rerun skips finished shards; what a changed spec (encoder, clip, per_shard,
this stage's code, a split's media) invalidates is deleted first (vaflow/data/journal.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vaflow import config
from vaflow.code import stage_code
from vaflow.data import extract
from vaflow.data import features as vx
from vaflow.data.journal import SPEC_FILE, SpecFolder
from vaflow.data.prepare import load_manifest
from vaflow.stage import Stage, run
from vaflow.tracking import Tracker
from vaflow.train.distributed import barrier, init_distributed

STAGE = Stage(
    "extract_visual",
    __doc__,
    {
        "--prepared": "prepare's output folder (manifest.csv)",
        "--encoder": "the visual_encoder stage's encoder directory",
        "--out": "feature folder: <split>/visual-%%06d.tar, spec.json",
        "--metrics": "folder of metrics/extract_visual.json",
    },
    tracked=("extract_visual", "clip"),
)


def extract_visual(params: config.Params, args: argparse.Namespace, tracker: Tracker) -> None:
    """Extract this rank's share of every split, then (rank 0) sum the splits up into rejected lists and metrics."""
    ex = params.extract_visual
    dist = init_distributed()
    encoder = vx.load_encoder(args.encoder, device=dist.device)
    manifest = load_manifest(Path(args.prepared) / "manifest.csv")
    extract.check_windows(manifest, params.clip)
    splits = extract.manifest_splits(manifest)
    num_frames = params.clip.n_frames(encoder.fps)
    code = stage_code(__file__)
    folder = SpecFolder(args.out)
    extract.sync_spec(
        folder, vx.feature_spec(encoder, params.clip, num_frames, ex.per_shard, splits, code), "feature"
    )
    identity = encoder.identity()
    if dist.is_main:
        print(f"encoder {identity['kind']} {identity['model_name']} ({identity['weights_hash']}): "
              f"T_v={encoder.num_features(num_frames)} x D_v={identity['dim']} at {identity['fps']:g} fps")  # fmt: skip

    t0 = time.perf_counter()
    encode = vx.FeatureEncoder(encoder, manifest)
    load = vx.FrameLoader(manifest, encoder, num_frames)
    extract.extract_splits(splits, folder, vx.FEATURE_NAME, load, encode, ex.batch_size, ex.per_shard, dist.rank,
                           dist.world_size, ex.workers)  # fmt: skip
    barrier()  # every rank's shards are finished before rank 0 sums up the splits
    if not dist.is_main:
        return
    summaries = extract.finish_splits(folder, splits, vx.FEATURE_NAME, ex.per_shard)
    seconds = time.perf_counter() - t0
    # Wall-clock time goes to the MLflow run only: metrics/extract_visual.json must be the same on every run.
    tracker.set_tags({"encoder.kind": identity["kind"], "encoder.weights_hash": identity["weights_hash"], "code": code,
                      "seconds": f"{seconds:.1f}", "device": dist.device})  # fmt: skip
    tracker.log_final(extract.summary_metrics(summaries))
    tracker.log_artifact(folder.root / SPEC_FILE)


def main(argv: list[str] | None = None) -> None:
    """Run the stage (flags as in dvc.yaml)."""
    run(STAGE, extract_visual, argv)


if __name__ == "__main__":
    main()
