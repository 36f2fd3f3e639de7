"""Stage `audio_vae`: train the WaveVAE on the train split's audio, or import one (SAO 1.0), then export it and
measure its test-split reconstruction against trivial baselines.

Outputs: `<out>/wavevae.safetensors` (EMA weights, config in the metadata) and `<out>/vae.json`;
`<metrics>/audio_vae.json` (+ `audio_vae_steps.tsv` when training) with the synthetic world's oracle figures when
`<prepared>` holds its ground truth, and `<metrics>/audio_vae_mels.png` (ground-truth vs reconstructed log-mels of a
few test clips, also logged to the MLflow run); checkpoints in `<checkpoints>/audio_vae-<hash of the clip and
audio_vae sections and of the code>/`, so a rerun resumes and a new config or new code restarts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import torch

from vaflow import config
from vaflow.code import stage_code
from vaflow.data.latents import export_model
from vaflow.data.prepare import load_manifest
from vaflow.errors import exit_on_user_error
from vaflow.eval import reconstruction
from vaflow.eval.oracle import read_truth, truth_dir
from vaflow.models import pretrained
from vaflow.models.wavevae import SIZES, CheckpointError, WaveVAE, build, load_wavevae
from vaflow.tracking import Tracker
from vaflow.train import wavevae as training
from vaflow.train.checkpoint import run_dir
from vaflow.train.distributed import env_rank
from vaflow.train.numerics import seed_everything
from vaflow.train.trainer import Trainer

# Test clips scored (evenly spaced over the split) and train clips averaged into the mean-spectrum baseline:
# all of them in the synthetic world; a bound on the work at VGGSound scale.
EVAL_CLIPS = 512
MEAN_SPECTRUM_CLIPS = 256
EVAL_BATCH = 8
# Test clips of distinct classes (one of each class of the synthetic world) drawn in the mel comparison figure,
# written beside the metrics file.
FIGURE_CLIPS = 8
FIGURE_NAME = "audio_vae_mels.png"


def train(
    params: config.Params, manifest, ckpt_dir: Path, tracker: Tracker, init: WaveVAE | None
) -> tuple[WaveVAE, torch.Tensor, dict]:
    """Train on random crops of the train clips, from `init` or from random weights; returns (EMA VAE, train mean
    log-mel, final train losses)."""
    cfg, clip = params.audio_vae, params.clip
    # A trained VAE runs at the pipeline's rate, whatever its size's nominal one.
    vae_config = dataclasses.replace(SIZES[cfg.size], sample_rate=clip.sample_rate)
    bank = training.load_bank(manifest[manifest["split"] == "train"], clip, vae_config.hop)
    print(f"train clips: {len(bank.ids)} decoded, {len(bank.rejected)} rejected")
    segment = training.segment_samples(cfg.segment, clip.sample_rate, vae_config.hop, bank.audio.shape[1])
    seed_everything(cfg.trainer.seed)  # the same initial weights on every rank and every rerun
    vae = init if init is not None else training.narrow_posterior(build(vae_config))
    model = training.WaveVAELoss(vae, cfg, segment)

    def stream(spec):
        return training.CropStream(
            bank.audio, spec.batch_size, segment, spec.rank, spec.world_size, spec.seed
        )

    sections = {"audio_vae": cfg.model_dump(mode="json"), "clip": clip.model_dump(mode="json")}
    trainer = Trainer(model, training.loss_fn, stream, cfg.trainer, ckpt_dir, tracker, stage_config=sections)
    result = trainer.fit()
    mean_spectrum = reconstruction.mean_log_mel(bank.audio, clip.sample_rate)
    return result.ema.vae, mean_spectrum, {f"train_{k}": v for k, v in result.losses.items()}


def load_checked(path: str, params: config.Params) -> WaveVAE:
    """Load a checkpoint strictly: a missing file or a key/shape mismatch is a CheckpointError naming the file.
    A pretrained folder's weights (the embedded default's) are first checked against their card: hash, size,
    sample rate and hop."""
    cfg = params.audio_vae
    default = config.AudioVAEConfig.model_fields["checkpoint"].default
    if pretrained.card_checked(path, default):
        pretrained.read_card(
            Path(path).parent, size=cfg.size, sample_rate=params.clip.sample_rate, hop=SIZES[cfg.size].hop
        )
    return load_wavevae(path, cfg.size)


def initial_vae(params: config.Params) -> WaveVAE | None:
    """`audio_vae.init`'s weights (None for a random start); they must run at the clip's rate."""
    if not params.audio_vae.init:
        return None
    vae = load_checked(params.audio_vae.init, params)
    if vae.config.sample_rate != params.clip.sample_rate:
        raise CheckpointError(
            f"{params.audio_vae.init}: audio_vae.init runs at {vae.config.sample_rate} Hz, clip.sample_rate is "
            f"{params.clip.sample_rate}"
        )
    return vae


def train_mean_spectrum(params: config.Params, manifest, hop: int) -> torch.Tensor:
    """The mean-spectrum baseline of an imported VAE, from a subset of the train clips."""
    rows = training.even_subset(manifest[manifest["split"] == "train"], MEAN_SPECTRUM_CLIPS)
    bank = training.load_bank(rows, params.clip, hop)
    if not bank.ids:
        raise config.ConfigError("no usable train clip for the mean-spectrum baseline")
    return reconstruction.mean_log_mel(bank.audio, params.clip.sample_rate)


def evaluate(
    vae: WaveVAE, params: config.Params, manifest, mean_spectrum: torch.Tensor, prepared: Path, figure: Path
) -> dict:
    """Test-split reconstruction figures, baselines and (synthetic world) oracle figures; writes the figure."""
    rows = training.even_subset(manifest[manifest["split"] == "test"], EVAL_CLIPS)
    bank = training.load_bank(rows, params.clip, vae.hop)
    if not bank.ids:
        raise config.ConfigError("no usable test clip to measure the reconstruction on")
    labels = dict(zip(rows["id"], rows["label"].astype(str), strict=True))
    folder = truth_dir(prepared)
    truths = [read_truth(folder, cid) for cid in bank.ids] if folder is not None else None
    figures = reconstruction.evaluate_reconstruction(
        vae.eval(), bank.audio, mean_spectrum, [labels[cid] for cid in bank.ids], truths, figure, FIGURE_CLIPS,
        EVAL_BATCH, progress=True,
    )  # fmt: skip
    return figures | {"test_rejected": float(len(bank.rejected))}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", required=True, help="the prepare stage's folder (manifest.csv)")
    parser.add_argument("--out", required=True, help="output folder: wavevae.safetensors, vae.json")
    parser.add_argument("--checkpoints", required=True, help="folder of the resumable training runs")
    parser.add_argument("--metrics", required=True, help="folder of the DVC metrics files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    params = config.load(args.params)
    cfg = params.audio_vae
    manifest = load_manifest(Path(args.prepared) / "manifest.csv")
    sections = {"audio_vae": cfg, "clip": params.clip}
    # A bad checkpoint or init fails before any run.
    imported = load_checked(cfg.checkpoint, params) if cfg.mode == "import" else None
    init = initial_vae(params) if cfg.mode == "train" else None
    with Tracker("audio_vae", params=sections, metrics_dir=args.metrics) as tracker:
        if cfg.mode == "train":
            identity = training.run_identity(cfg, params.clip, stage_code(__file__))
            ckpt_dir = run_dir(args.checkpoints, "audio_vae", identity)
            vae, mean_spectrum, figures = train(params, manifest, ckpt_dir, tracker, init)
        if env_rank()[0] != 0:
            return  # rank 0 exports and measures
        if imported is not None:
            vae, figures = imported, {}
            mean_spectrum = train_mean_spectrum(params, manifest, vae.hop)
        info = {"size": cfg.size, "mode": cfg.mode, "checkpoint": cfg.checkpoint}
        info = export_model(vae.cpu(), args.out, info)
        print(f"exported {args.out}: {json.dumps(info)}")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        figure = Path(args.metrics) / FIGURE_NAME
        figures |= evaluate(vae.to(device), params, manifest, mean_spectrum, Path(args.prepared), figure)
        tracker.log_final(figures)
        tracker.log_artifact(Path(args.out) / "vae.json")
        tracker.log_artifact(figure)
    for key, value in sorted(figures.items()):
        print(f"{key:32s} {value:.4f}")


if __name__ == "__main__":
    main()
