"""Stage `visual_encoder`: train a CAVP-style encoder (mode train), or import one (cavp / clip), or use raw pixels
(mode none); every mode writes the encoder directory (`encoder.json` + weights) that `extract_visual` reads."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaflow import config
from vaflow.code import stage_code
from vaflow.data.features import export_encoder
from vaflow.stage import Stage, run
from vaflow.tracking import Tracker
from vaflow.train import cavp as training
from vaflow.train.distributed import env_rank

STAGE = Stage(
    "visual_encoder",
    __doc__,
    {
        "--prepared": "prepare's output folder (manifest.csv)",
        "--out": "encoder directory to write",
        "--checkpoints": "root of the resumable training checkpoints",
        "--metrics": "folder of metrics/visual_encoder.json and its step log",
    },
    tracked=("visual_encoder", "clip"),
    fresh=("--out",),
)


def train(params: config.Params, args: argparse.Namespace, tracker: Tracker) -> None:
    """Train the CAVP-style encoder on the train clips; rank 0 exports its EMA weights and scores them."""
    manifest = Path(args.prepared) / "manifest.csv"
    trained = training.train_encoder(params.visual_encoder, params.clip, manifest, args.checkpoints,
                                     stage_code(__file__), tracker)  # fmt: skip
    if trained is None:
        return  # not rank 0
    model, losses = trained
    out = Path(args.out)
    model.save(out / "cavp.safetensors")
    encoder = export_encoder(out, "cavp", {}, out / "cavp.safetensors")
    final = {f"train_{k}": v for k, v in losses.items()}
    final.update(training.evaluate_encoder(model, manifest, params.clip.duration))
    finish(tracker, encoder, out, final)


def finish(tracker: Tracker, encoder, out: Path, final: dict[str, float]) -> None:
    """Log the encoder directory's identity and figures to the run."""
    identity = encoder.identity()
    final.update({"feature_dim": identity["dim"], "feature_fps": identity["fps"]})
    tracker.set_tags({f"encoder.{k}": identity[k] for k in ("kind", "model_name", "weights_hash")})
    tracker.log_final(final)
    tracker.log_artifact(out / "encoder.json")
    print(f"{out}: {identity['kind']} encoder {identity['model_name']} ({identity['weights_hash']}), "
          f"D_v={identity['dim']} at {identity['fps']:g} fps")  # fmt: skip


def import_or_none(params: config.Params, args: argparse.Namespace, tracker: Tracker) -> None:
    """Write the directory of an imported encoder (cavp, clip) or of the pixels stand-in."""
    out = Path(args.out)
    encoder, final = training.import_encoder(params.visual_encoder, out, Path(args.prepared) / "manifest.csv",
                                             params.clip.duration)  # fmt: skip
    tracker.no_steps()
    finish(tracker, encoder, out, final)


def build(params: config.Params, args: argparse.Namespace, tracker: Tracker) -> None:
    """Train the encoder, or import it (or the pixels stand-in) on rank 0 alone: nothing to do in parallel."""
    if params.visual_encoder.mode == "train":
        train(params, args, tracker)
    elif env_rank()[0] == 0:
        import_or_none(params, args, tracker)


def main(argv: list[str] | None = None) -> None:
    """Run the stage (flags as in dvc.yaml)."""
    run(STAGE, build, argv)


if __name__ == "__main__":
    main()
