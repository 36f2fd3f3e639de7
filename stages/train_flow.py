"""Stage `train_flow` (VAFlow stage 2, paper §3.3): the velocity estimator on paired train clips with the
alignment VAE frozen (Eq. 8); `flow.prior` picks the video prior (VAFlow) or N(0, I) (the flow baseline)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaflow import config
from vaflow.code import stage_code
from vaflow.errors import exit_on_user_error
from vaflow.hashing import weights_hash
from vaflow.models import artifacts
from vaflow.tracking import Tracker
from vaflow.train import vaflow as training
from vaflow.train.checkpoint import run_dir
from vaflow.train.numerics import seed_everything

STAGE = "train_flow"


def train(params: config.Params, args: argparse.Namespace, tracker: Tracker) -> None:
    cfg, flow_cfg = params.train_flow, params.flow
    data = training.open_flow_data(args.features, args.latents, cfg.val.clips)
    align, _ = artifacts.load_align_vae(args.align, data.features)
    training.check_align_fits(align, data, Path(args.align))
    mean, std = training.split_statistics(data.train)
    print(f"train: {data.train.n_clips} paired clips; x_v ({data.feature_length}, {data.feature_dim}) -> "
          f"x_a ({data.latent_length}, {data.latent_dim}); prior {flow_cfg.prior}, DiT {flow_cfg.size}")  # fmt: skip
    sections = {
        "flow": flow_cfg.model_dump(mode="json"),
        STAGE: cfg.model_dump(mode="json"),
        "features": data.features,
        "wavevae": data.wavevae,
        "align": weights_hash(Path(args.align) / artifacts.ALIGN_WEIGHTS),
        "code": stage_code(__file__),  # changed code never resumes a checkpoint of the old one
    }
    seed_everything(cfg.trainer.seed)  # before building the model: the same initial weights every run
    model = training.build_vaflow(flow_cfg, align, data.feature_dim, data.latent_dim, mean, std)
    result = training.fit(model, data, cfg, flow_cfg.compile, run_dir(args.checkpoints, STAGE, sections),
                          tracker, sections)  # fmt: skip
    if result is None:
        return  # not rank 0
    trained = [{"stage": STAGE, "steps": result.step}]
    training.export(result, data, cfg.val, args.out, trained, tracker)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--features", required=True, help="extract_visual's folder (<split>/visual-*.tar)")
    parser.add_argument("--latents", required=True, help="encode_audio's folder (<split>/audio-*.tar)")
    parser.add_argument("--align", required=True, help="train_align's model folder")
    parser.add_argument("--out", required=True, help="model folder to write (vaflow.safetensors + .json)")
    parser.add_argument("--checkpoints", required=True, help="root of the resumable training checkpoints")
    parser.add_argument("--metrics", required=True, help="folder of metrics/train_flow.json and its step log")
    args = parser.parse_args(argv)
    params = config.load(args.params)
    tracked = {"flow": params.flow, STAGE: params.train_flow}
    with Tracker(STAGE, params=tracked, metrics_dir=args.metrics) as tracker:
        train(params, args, tracker)


if __name__ == "__main__":
    main()
