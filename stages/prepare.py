"""Stage `prepare`: list the sources' clips, check each one, write the manifest and the rejected list.

The checks' verdicts are journalled under `--checkpoints` (not in `--out`, which a failed run puts back as it was),
so a rerun checks only the files it has no verdict for.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vaflow import config
from vaflow.data import prepare, sources
from vaflow.stage import Stage, run
from vaflow.tracking import Tracker

STAGE = Stage(
    "prepare",
    __doc__,
    {
        "--out": "output folder: manifest.csv, rejected.csv, synth media",
        "--checkpoints": "root of the resumable state (prepare/: the journal of the files' checks)",
        "--metrics": "metrics folder (prepare.json: the clip counts)",
    },
    tracked=("clip", "synth", "prepare"),
    fresh=("--out",),
)


def list_and_check(
    params: config.Params, args: argparse.Namespace, tracker: Tracker
) -> prepare.PrepareReport:
    """Check the sources' clips into the manifest and log the clip counts per split."""
    items = sources.list_items(params, Path(args.out))
    journal_dir = Path(args.checkpoints) / STAGE.name
    report = prepare.prepare(items, params.clip, params.prepare, Path(args.out), journal_dir=journal_dir)
    print(report.summary())
    counts = {f"clips_{s}": int((report.manifest["split"] == s).sum()) for s in config.SPLITS}
    tracker.log_final(counts | {"rejected": len(report.rejected)})
    tracker.log_artifact(report.rejected_path)
    return report


def refuse_empty(params: config.Params, args: argparse.Namespace, report: prepare.PrepareReport) -> None:
    """No usable clip is a bad source, raised once the run has logged the counts and the rejected list (the
    folder before it comes back, so the reasons are in the message and the run's artifacts)."""
    if report.manifest.empty:
        reasons = "; ".join(line.strip() for line in report.summary().splitlines()[1:])
        raise config.ConfigError(
            f"no usable clip in the source '{params.prepare.source}' ({reasons or 'it lists none'}); "
            "the rejected list is an artifact of this prepare run in MLflow"
        )


def main(argv: list[str] | None = None) -> None:
    """Run the stage (flags as in dvc.yaml)."""
    run(STAGE, list_and_check, argv, after=refuse_empty)


if __name__ == "__main__":
    main()
