"""Stage `joint_tune` (VAFlow stage 3, paper §3.3): the alignment-VAE encoder and the estimator trained together
with Eq. 9 (λ_KL·KL + flow loss), the VAE decoder discarded. `joint_tune.trainer.steps: 0` passes stage 2's model
through unchanged (Table 3's "not tuned" rows). Its folder is the model that sampling loads."""

from __future__ import annotations

import argparse
import dataclasses
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

STAGE = "joint_tune"


def tune(params: config.Params, args: argparse.Namespace, tracker: Tracker) -> None:
    cfg, flow_cfg = params.joint_tune, params.flow
    data = training.open_flow_data(args.features, args.latents, cfg.val.clips)
    stored = artifacts.read_card(args.flow, artifacts.FLOW_CARD)["settings"]
    video = stored["prior"] == "video"
    settings = dataclasses.replace(
        training.FlowSettings(**stored), kl_weight=cfg.kl_weight if video else 0.0, tune_encoder=video
    )
    model, card = artifacts.load_vaflow(args.flow, data.features, data.wavevae, settings)
    out = Path(args.out)
    if cfg.trainer.steps == 0:
        print(f"joint_tune.trainer.steps is 0: {args.flow} passes through untuned")
        trained = [*card["trained"], {"stage": STAGE, "steps": 0}]
        artifacts.save_vaflow(model, out, data.latent_length, data.features, data.wavevae, trained)
        final = training.flow_validation(data.val, cfg.val.times, cfg.val.seed)(model) if data.val else {}
        tracker.steps_path.parent.mkdir(parents=True, exist_ok=True)
        tracker.steps_path.write_text("step\n")  # no training: no stale curve from an earlier run
        tracker.log_final({**final, "tuned_steps": 0})
        tracker.log_artifact(out / artifacts.FLOW_CARD)
        return
    print(f"train: {data.train.n_clips} paired clips; tuning the estimator"
          f"{' and the alignment-VAE encoder (λ_KL ' + str(cfg.kl_weight) + ')' if video else ''}")  # fmt: skip
    sections = {
        "flow": flow_cfg.model_dump(mode="json"),
        STAGE: cfg.model_dump(mode="json"),
        "features": data.features,
        "wavevae": data.wavevae,
        "flow_model": weights_hash(Path(args.flow) / artifacts.FLOW_WEIGHTS),
        "code": stage_code(__file__),  # changed code never resumes a checkpoint of the old one
    }
    seed_everything(cfg.trainer.seed)
    result = training.fit(model, data, cfg, flow_cfg.compile, run_dir(args.checkpoints, STAGE, sections),
                          tracker, sections)  # fmt: skip
    if result is None:
        return  # not rank 0
    trained = [*card["trained"], {"stage": STAGE, "steps": result.step}]
    training.export(result, data, cfg.val, out, trained, tracker)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--features", required=True, help="extract_visual's folder (<split>/visual-*.tar)")
    parser.add_argument("--latents", required=True, help="encode_audio's folder (<split>/audio-*.tar)")
    parser.add_argument("--flow", required=True, help="train_flow's model folder")
    parser.add_argument("--out", required=True, help="model folder to write (vaflow.safetensors + .json)")
    parser.add_argument("--checkpoints", required=True, help="root of the resumable training checkpoints")
    parser.add_argument("--metrics", required=True, help="folder of metrics/joint_tune.json and its step log")
    args = parser.parse_args(argv)
    params = config.load(args.params)
    tracked = {"flow": params.flow, STAGE: params.joint_tune}
    with Tracker(STAGE, params=tracked, metrics_dir=args.metrics) as tracker:
        tune(params, args, tracker)


if __name__ == "__main__":
    main()
