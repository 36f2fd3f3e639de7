"""Stage `audio_vae`: train the WaveVAE on the train split's audio, or import one (SAO 1.0), then export it to
`<out>` and measure its test-split reconstruction against trivial baselines (`<metrics>/audio_vae.json`, the log-mel
figure `audio_vae_mels.png`); a rerun resumes its checkpoint unless the config or the code changed (README)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from vaflow import config
from vaflow.code import stage_code
from vaflow.data.prepare import load_manifest
from vaflow.models.wavevae import export_model
from vaflow.stage import Stage, run
from vaflow.tracking import Tracker
from vaflow.train import wavevae as training
from vaflow.train.checkpoint import run_dir
from vaflow.train.distributed import env_rank

STAGE = Stage(
    "audio_vae",
    __doc__,
    {
        "--prepared": "the prepare stage's folder (manifest.csv)",
        "--out": "output folder: wavevae.safetensors, vae.json",
        "--checkpoints": "folder of the resumable training runs",
        "--metrics": "folder of the DVC metrics files",
    },
    tracked=("audio_vae", "clip"),
    fresh=("--out",),
)


def checked_inputs(params: config.Params, args: argparse.Namespace) -> tuple:
    """(manifest, imported VAE, init VAE), read before the run starts: a bad input fails before any run."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = params.audio_vae
    manifest = load_manifest(Path(args.prepared) / "manifest.csv")
    imported = training.load_checked(cfg.checkpoint, params) if cfg.mode == "import" else None
    init = training.initial_vae(params) if cfg.mode == "train" else None
    return manifest, imported, init


def audio_vae(params: config.Params, args: argparse.Namespace, tracker: Tracker, inputs: tuple) -> None:
    """Train or import the VAE, then (rank 0) export, measure and print it."""
    cfg, (manifest, imported, init) = params.audio_vae, inputs
    if cfg.mode == "train":
        identity = training.run_identity(cfg, params.clip, stage_code(__file__))
        ckpt_dir = run_dir(args.checkpoints, STAGE.name, identity)
        vae, mean_spectrum, figures = training.train(params, manifest, ckpt_dir, tracker, init)
    if env_rank()[0] != 0:
        return  # rank 0 exports and measures
    if imported is not None:
        vae, figures = imported, {}
        mean_spectrum = training.train_mean_spectrum(params, manifest, vae.hop)
    card = {"size": cfg.size, "mode": cfg.mode, "checkpoint": cfg.checkpoint}
    card = export_model(vae.cpu(), args.out, card)
    print(f"exported {args.out}: {json.dumps(card)}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    figure = Path(args.metrics) / training.FIGURE_NAME
    figures |= training.evaluate(vae.to(device), params, manifest, mean_spectrum, Path(args.prepared), figure)
    tracker.log_final(figures)
    tracker.log_artifact(Path(args.out) / "vae.json")
    tracker.log_artifact(figure)
    print("\n".join(f"{key:32s} {value:.4f}" for key, value in sorted(figures.items())))


def main(argv: list[str] | None = None) -> None:
    """Run the stage (flags as in dvc.yaml)."""
    run(STAGE, audio_vae, argv, before=checked_inputs)


if __name__ == "__main__":
    main()
