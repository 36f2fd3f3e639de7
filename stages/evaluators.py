"""Stage `evaluators`: the proxy evaluators of DESIGN §6 (audio classifier, video-audio embedding model, sync
classifier), trained on the train split (mode train) or imported from a folder of saved ones (mode import), then
calibrated on the real test clips; writes `<name>.safetensors` + `<name>.json` per evaluator and
metrics/evaluators.json. The reference evaluators named in `evaluators.reference` are loaded from their files and
their features of the test split written beside (reference.json + one .npz each)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vaflow import config, stage
from vaflow.code import stage_code
from vaflow.eval import toolkits
from vaflow.generate import default_device
from vaflow.tracking import Tracker
from vaflow.train import evaluators as training
from vaflow.train.distributed import env_rank

STAGE = stage.Stage(
    "evaluators",
    __doc__,
    {
        "--prepared": "prepare's output folder (manifest.csv)",
        "--out": "evaluators folder to write (<name>.safetensors/.json)",
        "--checkpoints": "root of the resumable training checkpoints",
        "--metrics": "folder of metrics/evaluators.json",
    },
    tracked=("evaluators", "clip"),
    fresh=("--out",),
)


def run(settings: Any, clip: config.ClipConfig, prepared: Path, out: Path, checkpoints: Path, tracker: Tracker
        ) -> None:  # fmt: skip
    """The stage's work for an `evaluators` section (`settings`): train (every rank) or import (rank 0), then log
    the figures (rank 0)."""
    if 2 * settings.min_shift > clip.duration:
        raise config.ConfigError(
            f"evaluators.min_shift={settings.min_shift} s: a {clip.duration} s clip allows circular shifts of at "
            f"most {clip.duration / 2} s from alignment"
        )
    toolkits.check_files(settings.reference)  # before any training
    if settings.mode == "train":
        loaded = training.train_all(settings, clip, prepared, out, checkpoints, stage_code(__file__), tracker)
    elif env_rank()[0] == 0:
        loaded = training.import_all(settings, clip, prepared, out)
        tracker.no_steps()
    else:
        loaded = None
    if loaded is None:
        return  # not rank 0
    final: dict[str, float] = {}
    for name, evaluator in loaded.items():
        card = evaluator.card
        figures = card.get("calibration_here") or card["calibration"]
        final.update({f"{name}.{k}": v for k, v in figures.items() if isinstance(v, int | float)})
        tracker.set_tags({f"evaluator.{name}.weights_hash": card["weights_hash"]})
        tracker.log_artifact(Path(out) / f"{name}.json")
        shown = ", ".join(f"{k} {v:.3f}" for k, v in figures.items() if isinstance(v, float))
        print(f"{name} ({card['weights_hash']}): {shown}")
    if toolkits.given(settings.reference):  # the paper's instruments: their ground truth, once per weights
        truth = toolkits.test_split_truth(settings.reference, clip, prepared, out, default_device())
        tracker.set_tags(
            {f"evaluator.{n}.weights_hash": e["weights_hash"] for n, e in truth.card["evaluators"].items()}
        )
        tracker.log_artifact(out / toolkits.CARD)
    tracker.log_final(final)


def from_flags(params: config.Params, args: argparse.Namespace, tracker: Tracker) -> None:
    """`run` on the params file's `evaluators` section and the flags' folders."""
    run(params.evaluators, params.clip, Path(args.prepared), Path(args.out), Path(args.checkpoints), tracker)


def main(argv: list[str] | None = None) -> None:
    """Run the stage (flags as in dvc.yaml)."""
    stage.run(STAGE, from_flags, argv)


if __name__ == "__main__":
    main()
