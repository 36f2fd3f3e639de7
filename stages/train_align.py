"""Stage `train_align` (VAFlow stage 1, paper §3.3): the alignment VAE alone, on every train-split clip's visual
features (Eq. 4-7). With the `audioset_v2a` source those are AudioSet-V2A's clips, as the paper trains it."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaflow import config
from vaflow.code import stage_code
from vaflow.data import pairs
from vaflow.errors import exit_on_user_error
from vaflow.models import artifacts
from vaflow.models.align_vae import AlignLossWeights, AlignVAE, AlignVAEConfig
from vaflow.tracking import Tracker
from vaflow.train import vaflow as training
from vaflow.train.checkpoint import run_dir
from vaflow.train.numerics import seed_everything
from vaflow.train.trainer import Trainer

STAGE = "train_align"


def train(params: config.Params, args: argparse.Namespace, tracker: Tracker) -> None:
    cfg = params.train_align
    identity = artifacts.feature_identity(pairs.read_spec(args.features, pairs.FEATURES))
    train_split = pairs.open_split(args.features, "train")
    t_v, d_v = train_split.shapes["feat"]
    model_cfg = AlignVAEConfig(
        feature_dim=d_v,
        feature_length=t_v,
        latent_dim=params.audio_vae.latent_dim,
        latent_length=params.clip.latent_length(params.audio_vae.hop),
        channels=cfg.channels,
        blocks=cfg.blocks,
        kernel=cfg.kernel,
    )
    weights = AlignLossWeights(
        cfg.kl_weight, cfg.rec_weight, cfg.con_weight, cfg.clip_frames, cfg.temperature
    )
    print(f"train: {train_split.n_clips} clips; x_v ({t_v}, {d_v}) -> x_v^AE ({model_cfg.latent_length}, "
          f"{model_cfg.latent_dim})")  # fmt: skip
    val = training.load_validation(pairs.optional_split(args.features, "val"), cfg.val.clips)
    validate = training.align_validation(val, cfg.val.seed) if val is not None else None
    sections = {
        STAGE: cfg.model_dump(mode="json"),
        "model": model_cfg.to_dict(),
        "features": identity,
        "code": stage_code(__file__),  # changed code never resumes a checkpoint of the old one
    }
    seed_everything(cfg.trainer.seed)  # before building the model: the same initial weights every run
    trainer = Trainer(
        AlignVAE(model_cfg, weights),
        training.align_loss,
        lambda spec: pairs.ClipStream(train_split, spec.batch_size, spec.rank, spec.world_size, spec.seed),
        cfg.trainer,
        run_dir(args.checkpoints, STAGE, sections),
        tracker,
        stage_config=sections,
        validate=validate,
        validate_every=cfg.val.every,
    )
    result = trainer.fit()
    if not trainer.dist.is_main:
        return
    out = Path(args.out)
    artifacts.save_align_vae(result.ema, out, identity, {"stage": STAGE, "steps": result.step})
    final = training.final_metrics(result, validate)
    final["params"] = sum(p.numel() for p in result.ema.parameters())
    tracker.log_final(final)
    tracker.log_artifact(out / artifacts.ALIGN_CARD)
    print(
        f"{out}: alignment VAE ({final['params']} params), "
        + ", ".join(f"{k} {v:.4g}" for k, v in final.items())
    )


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--features", required=True, help="extract_visual's folder (<split>/visual-*.tar)")
    parser.add_argument("--out", required=True, help="model folder to write (align_vae.safetensors + .json)")
    parser.add_argument("--checkpoints", required=True, help="root of the resumable training checkpoints")
    parser.add_argument(
        "--metrics", required=True, help="folder of metrics/train_align.json and its step log"
    )
    args = parser.parse_args(argv)
    params = config.load(args.params)
    tracked = {STAGE: params.train_align, "clip": params.clip}
    with Tracker(STAGE, params=tracked, metrics_dir=args.metrics) as tracker:
        train(params, args, tracker)


if __name__ == "__main__":
    main()
