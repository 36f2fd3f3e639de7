"""Stage `train_flow` (VAFlow stage 2, paper §3.3): the velocity estimator on paired train clips with the
alignment VAE frozen (Eq. 8); `flow.prior` picks the video prior (VAFlow) or N(0, I) (the flow baseline)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaflow import config
from vaflow.code import stage_code
from vaflow.hashing import weights_hash
from vaflow.models import artifacts
from vaflow.stage import Stage, run
from vaflow.tracking import Tracker
from vaflow.train import vaflow as training
from vaflow.train.checkpoint import run_dir
from vaflow.train.numerics import seed_everything

STAGE = Stage(
    "train_flow",
    __doc__,
    {
        "--features": "extract_visual's folder (<split>/visual-*.tar)",
        "--latents": "encode_audio's folder (<split>/audio-*.tar)",
        "--align": "train_align's model folder",
        "--out": "model folder to write (vaflow.safetensors + .json)",
        "--checkpoints": "root of the resumable training checkpoints",
        "--metrics": "folder of metrics/train_flow.json and its step log",
    },
    tracked=("flow", "train_flow"),
    fresh=("--out",),
)


def train(params: config.Params, args: argparse.Namespace, tracker: Tracker) -> None:
    """Train the estimator on the paired train clips under the frozen prior; rank 0 exports the EMA model."""
    cfg, flow_cfg = params.train_flow, params.flow
    data = training.open_flow_data(args.features, args.latents, cfg.val.clips)
    align, _ = artifacts.load_align_vae(args.align, data.features)
    training.check_align_fits(align, data, Path(args.align))
    mean, std = training.split_statistics(data.train)
    print(f"train: {data.train.n_clips} paired clips; x_v ({data.feature_length}, {data.feature_dim}) -> "
          f"x_a ({data.latent_length}, {data.latent_dim}); prior {flow_cfg.prior}, DiT {flow_cfg.size}")  # fmt: skip
    sections = {
        "flow": flow_cfg.model_dump(mode="json"),
        STAGE.name: cfg.model_dump(mode="json"),
        "features": data.features,
        "wavevae": data.wavevae,
        "align": weights_hash(Path(args.align) / artifacts.ALIGN.weights),
        "code": stage_code(__file__),  # changed code never resumes a checkpoint of the old one
    }
    seed_everything(cfg.trainer.seed)  # before building the model: the same initial weights every run
    model = training.build_vaflow(flow_cfg, align, data.feature_dim, data.latent_dim, mean, std)
    checkpoints = run_dir(args.checkpoints, STAGE.name, sections)
    result = training.fit(model, data, cfg, flow_cfg.compile, checkpoints, tracker, sections)
    if result is None:
        return  # not rank 0
    trained = [{"stage": STAGE.name, "steps": result.step}]
    training.export(result, data, cfg.val, args.out, trained, tracker)


def main(argv: list[str] | None = None) -> None:
    """Run the stage (flags as in dvc.yaml)."""
    run(STAGE, train, argv)


if __name__ == "__main__":
    main()
