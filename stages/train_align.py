"""Stage `train_align` (VAFlow stage 1, paper §3.3): the alignment VAE alone, on the visual features of the train
split's clips of `train_align.sources` (Eq. 4-7): every prepared source by default, as the paper trains it on
VGGSound + AudioSet-V2A."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaflow import config
from vaflow.code import stage_code
from vaflow.data import pairs
from vaflow.data.prepare import source_ids
from vaflow.models import artifacts
from vaflow.models.align_vae import AlignVAE
from vaflow.stage import Stage, run
from vaflow.tracking import Tracker
from vaflow.train import vaflow as training
from vaflow.train.checkpoint import run_dir
from vaflow.train.numerics import seed_everything
from vaflow.train.trainer import Trainer

STAGE = Stage(
    "train_align",
    __doc__,
    {
        "--prepared": "prepare's folder (manifest.csv: which source each clip comes from)",
        "--features": "extract_visual's folder (<split>/visual-*.tar), or a URL of a copy of it",
        "--out": "model folder to write (align_vae.safetensors + .json)",
        "--checkpoints": "root of the resumable training checkpoints",
        "--metrics": "folder of metrics/train_align.json and its step log",
    },
    tracked=("train_align", "clip"),
    fresh=("--out",),
)


def train(params: config.Params, args: argparse.Namespace, tracker: Tracker) -> None:
    """Train the alignment VAE with fixed-draw validation on the val clips; rank 0 exports its EMA weights."""
    cfg = params.train_align
    identity = artifacts.feature_identity(pairs.read_spec(args.features, pairs.FEATURES))
    ids = source_ids(args.prepared, cfg.sources)
    train_split = pairs.open_split(args.features, "train", ids=ids)
    t_v, d_v = train_split.shapes["feat"]
    model_cfg = training.align_config(cfg, (t_v, d_v), params.audio_vae.latent_dim,
                                      params.clip.latent_length(params.audio_vae.hop))  # fmt: skip
    print(f"train: {train_split.n_clips} clips; x_v ({t_v}, {d_v}) -> x_v^AE ({model_cfg.latent_length}, "
          f"{model_cfg.latent_dim})")  # fmt: skip
    val = training.load_validation(pairs.optional_split(args.features, "val", ids=ids), cfg.val.clips)
    validate = training.validator(val, cfg.val, "align")
    # the code too: changed code never resumes a checkpoint of the old one
    sections = {STAGE.name: cfg.model_dump(mode="json"), "model": model_cfg.to_dict(), "features": identity,
                "code": stage_code(__file__)}  # fmt: skip
    seed_everything(cfg.trainer.seed)  # before building the model: the same initial weights every run
    trainer = Trainer(
        AlignVAE(model_cfg, training.align_weights(cfg)),
        training.align_loss,
        lambda spec: pairs.ClipStream(train_split, spec.batch_size, spec.rank, spec.world_size, spec.seed),
        cfg.trainer,
        run_dir(args.checkpoints, STAGE.name, sections),
        tracker,
        stage_config=sections,
        validate=validate,
        validate_every=cfg.val.every,
    )
    result = trainer.fit()
    if not trainer.dist.is_main:
        return
    out = Path(args.out)
    artifacts.save_align_vae(result.ema, out, identity, {"stage": STAGE.name, "steps": result.step})
    final = training.final_metrics(result, validate)
    final["params"] = sum(p.numel() for p in result.ema.parameters())
    tracker.log_final(final)
    tracker.log_artifact(out / artifacts.ALIGN.card)
    print(f"{out}: alignment VAE, " + ", ".join(f"{k} {v:.4g}" for k, v in final.items()))


def main(argv: list[str] | None = None) -> None:
    """Run the stage (flags as in dvc.yaml)."""
    run(STAGE, train, argv)


if __name__ == "__main__":
    main()
