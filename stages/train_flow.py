"""Stage `train_flow` (VAFlow stage 2, paper §3.3): the velocity estimator on paired train clips with the
alignment VAE frozen (Eq. 8); `flow.prior` picks the video prior (VAFlow) or N(0, I) (the flow baseline).
`train_flow.init` fine-tunes an exported VAFlow model (its estimator and alignment-VAE encoder) instead, and
train_align's model is then not read."""

from __future__ import annotations

import argparse

from vaflow import config
from vaflow.code import stage_code
from vaflow.data.prepare import source_ids
from vaflow.stage import Stage, run
from vaflow.tracking import Tracker
from vaflow.train import vaflow as training
from vaflow.train.checkpoint import run_dir

STAGE = Stage(
    "train_flow",
    __doc__,
    {
        "--prepared": "prepare's folder (manifest.csv: which source each clip comes from)",
        "--features": "extract_visual's folder (<split>/visual-*.tar), or a URL of a copy of it",
        "--latents": "encode_audio's folder (<split>/audio-*.tar), or a URL of a copy of it",
        "--align": "train_align's model folder",
        "--out": "model folder to write (vaflow.safetensors + .json)",
        "--checkpoints": "root of the resumable training checkpoints",
        "--metrics": "folder of metrics/train_flow.json and its step log",
    },
    tracked=("flow", "train_flow"),
    fresh=("--out",),
)


def inputs(params: config.Params, args: argparse.Namespace) -> tuple[training.FlowData, training.FlowStart]:
    """The paired data and the model to train, read before the run starts: a model that does not fit the data
    (another visual encoder or WaveVAE on `init`'s card) fails before any run or step."""
    cfg = params.train_flow
    data = training.open_flow_data(
        args.features, args.latents, cfg.val.clips, source_ids(args.prepared, cfg.sources)
    )
    return data, training.stage2_start(params.flow, params.train_flow, data, args.align)


def train(
    params: config.Params,
    args: argparse.Namespace,
    tracker: Tracker,
    ready: tuple[training.FlowData, training.FlowStart],
) -> None:
    """Train the estimator on the paired train clips under the frozen prior; rank 0 exports the EMA model."""
    (cfg, flow_cfg), (data, start) = (params.train_flow, params.flow), ready
    print(f"train: {data.train.n_clips} paired clips; x_v ({data.feature_length}, {data.feature_dim}) -> "
          f"x_a ({data.latent_length}, {data.latent_dim}); prior {flow_cfg.prior}, DiT {flow_cfg.size}")  # fmt: skip
    sections = {
        "flow": flow_cfg.model_dump(mode="json"),
        STAGE.name: cfg.model_dump(mode="json"),
        "features": data.features,
        "wavevae": data.wavevae,
        **start.origin,  # the starting weights: train_align's model, or init's
        "code": stage_code(__file__),  # changed code never resumes a checkpoint of the old one
    }
    checkpoints = run_dir(args.checkpoints, STAGE.name, sections)
    result = training.fit(start.model, data, cfg, flow_cfg.compile, checkpoints, tracker, sections)
    if result is None:
        return  # not rank 0
    trained = [*start.trained, {"stage": STAGE.name, "steps": result.step}]
    training.export(result, data, cfg.val, args.out, trained, tracker)


def main(argv: list[str] | None = None) -> None:
    """Run the stage (flags as in dvc.yaml)."""
    run(STAGE, train, argv, before=inputs)


if __name__ == "__main__":
    main()
