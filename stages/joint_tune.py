"""Stage `joint_tune` (VAFlow stage 3, paper §3.3): the alignment-VAE encoder and the estimator trained together
with Eq. 9 (λ_KL·KL + flow loss), the VAE decoder discarded. `joint_tune.trainer.steps: 0` passes stage 2's model
through unchanged (Table 3's "not tuned" rows); `joint_tune.init` starts from an exported VAFlow model instead of
stage 2's. Its folder is the model that sampling loads."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaflow import config
from vaflow.code import stage_code
from vaflow.data.prepare import source_ids
from vaflow.models import artifacts
from vaflow.stage import Stage, run
from vaflow.tracking import Tracker
from vaflow.train import vaflow as training
from vaflow.train.checkpoint import run_dir
from vaflow.train.numerics import seed_everything

STAGE = Stage(
    "joint_tune",
    __doc__,
    {
        "--prepared": "prepare's folder (manifest.csv: which source each clip comes from)",
        "--features": "extract_visual's folder (<split>/visual-*.tar), or a URL of a copy of it",
        "--latents": "encode_audio's folder (<split>/audio-*.tar), or a URL of a copy of it",
        "--flow": "train_flow's model folder",
        "--out": "model folder to write (vaflow.safetensors + .json)",
        "--checkpoints": "root of the resumable training checkpoints",
        "--metrics": "folder of metrics/joint_tune.json and its step log",
    },
    tracked=("flow", "joint_tune"),
    fresh=("--out",),
)


def inputs(params: config.Params, args: argparse.Namespace) -> tuple[training.FlowData, training.FlowStart]:
    """The paired data and the model to tune, read before the run starts: a model that does not fit the data
    (another visual encoder or WaveVAE on its card) fails before any run or step."""
    cfg = params.joint_tune
    data = training.open_flow_data(
        args.features, args.latents, cfg.val.clips, source_ids(args.prepared, cfg.sources)
    )
    return data, training.stage3_start(params.flow, params.joint_tune, data, args.flow)


def tune(
    params: config.Params,
    args: argparse.Namespace,
    tracker: Tracker,
    ready: tuple[training.FlowData, training.FlowStart],
) -> None:
    """Tune stage 2's model (or `init`) with Eq. 9 (or pass it through at 0 steps); rank 0 exports the EMA model."""
    (cfg, flow_cfg), (data, start) = (params.joint_tune, params.flow), ready
    model, out = start.model, Path(args.out)
    if cfg.trainer.steps == 0:
        print(f"joint_tune.trainer.steps is 0: {cfg.init or args.flow} passes through untuned")
        trained = [*start.trained, {"stage": STAGE.name, "steps": 0}]
        artifacts.save_vaflow(model, out, data.latent_length, data.features, data.wavevae, trained)
        final = training.validator(data.val, cfg.val, "flow")(model) if data.val else {}
        tracker.no_steps()
        tracker.log_final({**final, "tuned_steps": 0})
        tracker.log_artifact(out / artifacts.FLOW.card)
        return
    encoder = f" and the alignment-VAE encoder (λ_KL {cfg.kl_weight})" if model.settings.tune_encoder else ""
    print(f"train: {data.train.n_clips} paired clips; tuning the estimator{encoder}")
    # the starting weights and the code too: changed code never resumes a checkpoint of the old one
    sections = {"flow": flow_cfg.model_dump(mode="json"), STAGE.name: cfg.model_dump(mode="json"),
                "features": data.features, "wavevae": data.wavevae, "code": stage_code(__file__), **start.origin}  # fmt: skip
    seed_everything(cfg.trainer.seed)
    checkpoints = run_dir(args.checkpoints, STAGE.name, sections)
    result = training.fit(model, data, cfg, flow_cfg.compile, checkpoints, tracker, sections)
    if result is None:
        return  # not rank 0
    trained = [*start.trained, {"stage": STAGE.name, "steps": result.step}]
    training.export(result, data, cfg.val, out, trained, tracker)


def main(argv: list[str] | None = None) -> None:
    """Run the stage (flags as in dvc.yaml)."""
    run(STAGE, tune, argv, before=inputs)


if __name__ == "__main__":
    main()
