"""Stage `evaluate` (paper §4.1 "Metrics", DESIGN §6): the sampled test audio and the reference rows (ground truth,
ground truth through the WaveVAE, the prior draw decoded without the flow) scored with the proxy evaluators and the
synthetic world's oracle → metrics/eval.json, reports/table.md (paper Table 1 layout) and the gallery
reports/index.html, all logged to the stage's MLflow run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from vaflow import atomic, config
from vaflow.data import pairs
from vaflow.data.prepare import load_manifest
from vaflow.errors import exit_on_user_error
from vaflow.eval import evaluators as ev
from vaflow.eval import gallery, oracle, report, scoring
from vaflow.eval.references import reference_audio
from vaflow.generate import default_device, load_models
from vaflow.generate.generator import read_wav
from vaflow.generate.samples import INDEX_FILE, SPEC_FILE
from vaflow.models import artifacts
from vaflow.tracking import Tracker
from vaflow.train import evaluators as et

STAGE = "evaluate"
SPLIT = "test"


def _generated(samples: Path, rate: int) -> tuple[list[str], np.ndarray]:
    """Draw 0 of every clip in the sample stage's index → (ids, audio (N, samples)); non-finite ones as NaN rows."""
    index = pd.read_csv(samples / INDEX_FILE)
    index = index[index["k"] == 0]
    rows = []
    for r in index.itertuples(index=False):
        audio, got = read_wav(samples / r.wav)
        if got != rate:
            raise ValueError(f"{samples / r.wav}: {got} Hz, the evaluators run at {rate} Hz")
        rows.append(audio if bool(r.finite) else np.full_like(audio, np.nan))  # a diverged draw stays marked
    return list(index["id"]), np.stack(rows)


def evaluate(params: config.Params, args: argparse.Namespace, tracker: Tracker) -> None:
    cfg = params.evaluate
    evaluators = ev.load_evaluators(args.evaluators)
    classifier = evaluators["audio_classifier"]
    rate = int(classifier.card["sample_rate"])
    manifest = load_manifest(Path(args.prepared) / "manifest.csv", SPLIT)
    clips = et.load_split(manifest.to_dict("records"), classifier.model.config, params.clip.duration)
    truth_folder = oracle.truth_dir(args.prepared)
    reference = scoring.make_reference(evaluators, clips, truth_folder)
    print(
        f"{len(clips)} test clips decoded ({len(clips.rejected)} left out); ground truth: {truth_folder or 'none'}"
    )

    features_spec = pairs.read_spec(args.features, pairs.FEATURES)
    models = load_models(args.model, args.vae, artifacts.feature_identity(features_spec), default_device())
    spec = json.loads((Path(args.samples) / SPEC_FILE).read_text())
    refs = reference_audio(models, pairs.open_split(args.features, SPLIT, args.latents), int(spec["seed"]))
    gen_ids, gen_audio = _generated(Path(args.samples), rate)

    def score(name, ids, audio, **kw):
        keep = [k for k, i in enumerate(ids) if i in set(clips.ids)]  # clips the evaluators could decode
        row = scoring.score_row(name, [ids[k] for k in keep], audio[keep], rate, reference, evaluators,
                                cfg.onset_tolerance, cfg.is_splits, cfg.silent_db, **kw)  # fmt: skip
        print(f"{report.ROW_TITLES[name]}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.metrics.items()
                                                        if isinstance(v, float)))  # fmt: skip
        return row

    rows = [
        score("ground_truth", clips.ids, clips.audio.numpy(), is_reference=True),
        score("wavevae_ceiling", refs.ids, refs.ceiling),
        score("prior_decoded", refs.ids, refs.prior),
        score("vaflow", gen_ids, gen_audio),
    ]
    calibration = classifier.card.get("calibration_here") or classifier.card["calibration"]
    provenance = {
        "split": SPLIT,
        "clips": len(clips),
        "seed": spec["seed"],
        "sampler": spec["sampler"],
        "cfg_applied": spec["cfg_applied"],
        "visual_features": f"{features_spec['encoder']['kind']} {features_spec['encoder']['fps']:g} fps",
        "models": {"vaflow": models.flow_hash, "wavevae": models.vae_hash},
        "evaluators": {n: {k: e.identity()[k] for k in ("stands_in_for", "weight_hash")} for n, e in evaluators.items()},
        "fd_floor": calibration.get("fd_halves"),
        "fd_floor_n": calibration.get("fd_halves_n"),
        "oracle": truth_folder is not None,
        "onset_tolerance": cfg.onset_tolerance,
        "is_splits": cfg.is_splits,
        "silent_db": cfg.silent_db,
    }  # fmt: skip
    out = Path(args.reports)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "table.md", report.markdown_table(rows, provenance))
    windows = {r.id: (r.path, float(r.start), float(r.duration)) for r in manifest.itertuples(index=False)}
    shown = [i for i in gen_ids if i in windows and i in set(clips.ids)][: cfg.gallery]
    gallery_clips = gallery.gallery_media(out, shown, rows[-1], reference, gen_ids, gen_audio, windows)
    gallery.write_gallery(
        out, rows, report.table_rows(rows), gallery_clips, report.provenance_lines(provenance)
    )

    tracker.log_final({f"{r.name}.{k}": v for r in rows for k, v in r.metrics.items() if v is not None})
    tracker.log_provenance(provenance)
    tracker.log_artifact(out / "table.md")
    tracker.log_artifact(out, "gallery")
    print(f"{out / 'table.md'}, {out / 'index.html'} ({len(gallery_clips)} clips)")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", required=True, help="prepare's folder (manifest.csv, ground truth)")
    parser.add_argument(
        "--samples", required=True, help="the sample stage's folder (index.csv, spec.json, wavs)"
    )
    parser.add_argument("--evaluators", required=True, help="the evaluators stage's folder")
    parser.add_argument("--features", required=True, help="extract_visual's folder (test shards: prior row)")
    parser.add_argument("--latents", required=True, help="encode_audio's folder (test shards: ceiling row)")
    parser.add_argument("--model", required=True, help="joint_tune's model folder")
    parser.add_argument("--vae", required=True, help="audio_vae's model folder")
    parser.add_argument("--reports", required=True, help="folder of table.md, index.html and media/")
    parser.add_argument("--metrics", required=True, help="folder of metrics/eval.json")
    args = parser.parse_args(argv)
    params = config.load(args.params)
    tracked = {STAGE: params.evaluate, "clip": params.clip}
    with Tracker(STAGE, params=tracked, metrics_dir=args.metrics, metrics_name="eval") as tracker:
        evaluate(params, args, tracker)


if __name__ == "__main__":
    main()
