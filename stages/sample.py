"""Stage `sample` (paper §3.3, Inference): every test clip's visual features → x_0 drawn from the video prior →
the guided ODE (Eq. 1, 10) → WaveVAE decoder → `<id>.wav`, plus mp4 previews of the first `sample.mux` clips, an
index and metrics/sample.json. Resumable: finished wavs of the same spec are kept (see vaflow/generate/samples.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaflow import config
from vaflow.code import stage_code
from vaflow.data import extract, pairs
from vaflow.data.journal import SPEC_FILE, SpecFolder
from vaflow.data.prepare import load_manifest
from vaflow.generate import Sampler, default_device, load_models, sample_spec, sample_split
from vaflow.generate.samples import INDEX_FILE
from vaflow.models import artifacts
from vaflow.stage import Stage, run
from vaflow.tracking import Tracker

STAGE = Stage(
    "sample",
    __doc__,
    {
        "--features": "extract_visual's folder (<split>/visual-*.tar)",
        "--model": "joint_tune's model folder (vaflow.json + weights)",
        "--vae": "audio_vae's model folder (the WaveVAE decoder)",
        "--prepared": "prepare's folder (manifest.csv: the original videos)",
        "--out": "samples folder to write (<id>.wav, index.csv, spec.json)",
        "--metrics": "folder of metrics/sample.json",
    },
    tracked=("sample", "clip"),
)
SPLIT = "test"


def sample(params: config.Params, args: argparse.Namespace, tracker: Tracker) -> None:
    """Generate every test clip's audio (finished wavs of the same spec are kept) and log the figures."""
    cfg = params.sample
    features_spec = pairs.read_spec(args.features, pairs.FEATURES)
    models = load_models(args.model, args.vae, artifacts.feature_identity(features_spec), default_device())
    want = params.clip.latent_length(models.vae.hop)
    if models.latent_length != want:
        raise artifacts.ModelMismatchError(
            f"{args.model} generates T_a = {models.latent_length} latent frames, but clip {params.clip} gives "
            f"{want}: the model was trained on other clips; rerun the pipeline (dvc repro)"
        )
    split = pairs.open_split(args.features, SPLIT)
    manifest = load_manifest(Path(args.prepared) / "manifest.csv", SPLIT)
    windows = {r.id: (r.path, float(r.start), float(r.duration)) for r in manifest.itertuples(index=False)}
    sampler = Sampler(cfg.solver, cfg.steps, cfg.cfg, cfg.cond)
    code = stage_code(__file__)
    spec = sample_spec(models, features_spec, sampler, cfg.seed, cfg.samples_per_clip, code)
    out = Path(args.out)
    folder = SpecFolder(out)
    extract.sync_spec(folder, spec, "sample")
    if sampler.applied_cfg(models.flow) != cfg.cfg:
        print(f"sample.cfg {cfg.cfg} has no effect: the estimator does not see x_v (cond {cfg.cond}), γ = 0")
    print(f"{split.n_clips} test clips × {cfg.samples_per_clip}: {cfg.solver}, {cfg.steps} steps, γ {cfg.cfg}, "
          f"cond {cfg.cond}; {models.window_seconds:g} s at {models.sample_rate} Hz")  # fmt: skip
    report = sample_split(models, split, folder, sampler, cfg.seed, cfg.samples_per_clip, cfg.batch_size,
                          cfg.mux, windows)  # fmt: skip
    metrics = {**report.metrics(), "steps": cfg.steps, "cfg": cfg.cfg, "cfg_applied": spec["cfg_applied"]}
    tracker.set_tags({"sample.solver": cfg.solver, "sample.cond": cfg.cond, "model.weights": models.flow_hash,
                      "code": code})  # fmt: skip
    tracker.log_final(metrics)
    tracker.log_final(report.run_figures(), in_file=False)  # wall-clock and resume counts vary run to run
    tracker.log_artifact(out / INDEX_FILE)
    tracker.log_artifact(out / SPEC_FILE)
    print(f"{out}: {metrics['samples']} wavs ({report.generated} generated, {report.skipped} kept), "
          f"{metrics['nfe_per_clip']:g} NFE and {report.run_figures()['seconds_per_clip']:.3f} s per clip, "
          f"{report.previews} previews ({report.muxed} muxed now); {metrics['nonfinite']} non-finite")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Run the stage (flags as in dvc.yaml)."""
    run(STAGE, sample, argv)


if __name__ == "__main__":
    main()
