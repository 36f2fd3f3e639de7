"""Stage `visual_encoder`: train a CAVP-style encoder (mode train), or import one (cavp / clip), or use raw pixels
(mode none); every mode writes the encoder directory (`encoder.json` + weights) that `extract_visual` reads."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaflow import config
from vaflow.code import stage_code
from vaflow.data.features import export_encoder
from vaflow.data.prepare import load_manifest
from vaflow.errors import exit_on_user_error
from vaflow.models.encoders import CAVP
from vaflow.tracking import Tracker
from vaflow.train import cavp as training
from vaflow.train.checkpoint import run_dir
from vaflow.train.distributed import env_rank
from vaflow.train.numerics import seed_everything
from vaflow.train.trainer import Trainer

STAGE = "visual_encoder"
# The pixels stand-in reads frames at the synthetic world's size; area pooling then brings them to `pixels.side`.
PIXELS_INPUT_SIZE = (64, 64)


def train(params: config.Params, args: argparse.Namespace, tracker: Tracker) -> None:
    cfg = params.visual_encoder
    model_cfg = training.cavp_config(cfg.frame_rate, params.clip.sample_rate, cfg.cavp.embed_dim)
    manifest = Path(args.prepared) / "manifest.csv"
    data = training.load_clips(
        load_manifest(manifest, "train").to_dict("records"), model_cfg, params.clip.duration
    )
    print(f"train: {len(data)} clips decoded, {len(data.rejected)} rejected")
    for clip_id, reason in data.rejected:
        print(f"  rejected {clip_id}: {reason}")
    if len(data) < cfg.trainer.batch_size:
        raise config.ConfigError(
            f"{len(data)} usable training clips, fewer than visual_encoder.trainer.batch_size={cfg.trainer.batch_size}"
        )

    def stream(spec):
        return training.ClipBatches(data, spec.batch_size, spec.rank, spec.world_size, spec.seed)

    sections = {
        STAGE: cfg.model_dump(mode="json"),
        "clip": params.clip.model_dump(mode="json"),
        "code": stage_code(__file__),  # changed code never resumes a checkpoint of the old one
    }
    seed_everything(cfg.trainer.seed)  # before building the model: the same initial weights every run
    objective = training.CAVPObjective(CAVP(model_cfg))
    trainer = Trainer(
        objective,
        training.cavp_loss,
        stream,
        cfg.trainer,
        run_dir(args.checkpoints, STAGE, sections),
        tracker,
        stage_config={**sections, "cavp": model_cfg.to_dict()},
    )
    result = trainer.fit()
    if not trainer.dist.is_main:
        return
    out = Path(args.out)
    model = result.ema.model  # the EMA weights are the ones evaluated and shipped
    model.save(out / "cavp.safetensors")
    encoder = export_encoder(out, "cavp", {}, out / "cavp.safetensors")
    final = {f"train_{k}": v for k, v in result.losses.items()}
    final.update(evaluate(model, manifest, params))
    finish(tracker, encoder, out, final)


def evaluate(model: CAVP, manifest: Path, params: config.Params) -> dict[str, float]:
    """Held-out retrieval and temporal discrimination on the test split, printed and returned as metrics."""
    rows = load_manifest(manifest, "test").to_dict("records")
    test = training.load_clips(rows, model.config, params.clip.duration)
    if len(test) < 2:
        print(f"test: {len(test)} usable clips, too few to evaluate the encoder")
        return {}
    ev = training.evaluate_cavp(model, test)
    print(
        f"test ({ev.n_clips} clips): retrieval top-1 {ev.top1:.3f} (chance {ev.top1_chance:.3f}), "
        f"top-5 {ev.top5:.3f} (chance {ev.top5_chance:.3f}); temporal discrimination {ev.temporal:.3f} "
        f"(chance {ev.temporal_chance:.1f}, {ev.temporal_trials} trials)"
    )
    return ev.metrics()


def finish(tracker: Tracker, encoder, out: Path, final: dict[str, float]) -> None:
    identity = encoder.identity()
    final.update({"feature_dim": identity["dim"], "feature_fps": identity["fps"]})
    tracker.set_tags({f"encoder.{k}": identity[k] for k in ("kind", "model_name", "weight_hash")})
    tracker.log_final(final)
    tracker.log_artifact(out / "encoder.json")
    print(f"{out}: {identity['kind']} encoder {identity['model_name']} ({identity['weight_hash']}), "
          f"D_v={identity['dim']} at {identity['fps']:g} fps")  # fmt: skip


def import_or_none(params: config.Params, args: argparse.Namespace, tracker: Tracker) -> None:
    cfg, out = params.visual_encoder, Path(args.out)
    if cfg.kind == "cavp":
        encoder = export_encoder(out, "cavp", {}, cfg.cavp.checkpoint)
        final = evaluate(encoder.model, Path(args.prepared) / "manifest.csv", params)
    elif cfg.kind == "clip":
        options = {"model_name": cfg.clip.model_name, "normalize": cfg.clip.normalize, "fps": cfg.frame_rate}
        encoder, final = export_encoder(out, "clip", options, cfg.clip.weights), {}
    else:
        side = (cfg.pixels.side, cfg.pixels.side)
        options = {"fps": cfg.frame_rate, "input_size": PIXELS_INPUT_SIZE, "size": side}
        encoder, final = export_encoder(out, "pixels", options), {}
    # No training: an empty step log replaces a previous run's, so `dvc plots` shows no stale curve.
    tracker.steps_path.parent.mkdir(parents=True, exist_ok=True)
    tracker.steps_path.write_text("step\n")
    finish(tracker, encoder, out, final)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", required=True, help="prepare's output folder (manifest.csv)")
    parser.add_argument("--out", required=True, help="encoder directory to write")
    parser.add_argument("--checkpoints", required=True, help="root of the resumable training checkpoints")
    parser.add_argument(
        "--metrics", required=True, help="folder of metrics/visual_encoder.json and its step log"
    )
    args = parser.parse_args(argv)

    params = config.load(args.params)
    if params.visual_encoder.mode != "train" and env_rank()[0] != 0:
        return  # nothing to compute in parallel: rank 0 writes the directory
    tracked = {STAGE: params.visual_encoder, "clip": params.clip}
    with Tracker(STAGE, params=tracked, metrics_dir=args.metrics) as tracker:
        if params.visual_encoder.mode == "train":
            train(params, args, tracker)
        else:
            import_or_none(params, args, tracker)


if __name__ == "__main__":
    main()
