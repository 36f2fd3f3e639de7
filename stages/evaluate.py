"""Stage `evaluate` (paper §4.1 "Metrics", DESIGN §6): the sampled test audio and the reference rows (ground truth,
ground truth through the WaveVAE, the prior draw decoded without the flow) scored with the proxy evaluators, the
synthetic world's oracle and the reference evaluators whose ground truth the evaluators stage computed →
metrics/eval.json, reports/table.md (paper Table 1 layout) and the gallery reports/index.html, all logged to the
stage's MLflow run."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from vaflow import config
from vaflow.eval import table
from vaflow.stage import Stage, run
from vaflow.tracking import Tracker

STAGE = Stage(
    "evaluate",
    __doc__,
    {
        "--prepared": "prepare's folder (manifest.csv, ground truth)",
        "--samples": "the sample stage's folder (index.csv, spec.json, wavs)",
        "--evaluators": "the evaluators stage's folder",
        "--features": "extract_visual's folder (test shards: prior row)",
        "--latents": "encode_audio's folder (test shards: ceiling row)",
        "--model": "joint_tune's model folder",
        "--vae": "audio_vae's model folder",
        "--reports": "folder of table.md, index.html and media/",
        "--metrics": "folder of metrics/eval.json",
    },
    tracked=("evaluate", "clip"),
    metrics_name="eval",
)


def evaluate(params: config.Params, args: argparse.Namespace, tracker: Tracker) -> None:
    """Score the four rows (ground truth, WaveVAE ceiling, prior decoded, VAFlow); write table and gallery."""
    done = table.evaluate_split(params.evaluate, params.clip, vars(args))
    rows, out = done.rows, done.out
    tracker.log_final({f"{r.name}.{k}": v for r in rows for k, v in r.metrics.items() if v is not None})
    tracker.log_provenance(done.provenance)
    tracker.log_artifact(out / "table.md")
    tracker.log_artifact(out, "gallery")
    with tempfile.TemporaryDirectory() as tmp:  # for comparisons across runs at equal clips (vaflow tables)
        tracker.log_artifact(done.write_embeddings(Path(tmp) / table.EMBEDDINGS))
    print(f"{out / 'table.md'}, {out / 'index.html'} ({len(done.gallery_clips)} clips)")


def main(argv: list[str] | None = None) -> None:
    """Run the stage (flags as in dvc.yaml)."""
    run(STAGE, evaluate, argv)


if __name__ == "__main__":
    main()
