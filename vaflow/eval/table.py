"""The evaluate stage's work (paper §4.1 "Metrics", DESIGN §6): the four rows of the test split scored, the
paper-style table and the gallery written."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vaflow import atomic
from vaflow.data import pairs
from vaflow.data.clips import load_split
from vaflow.data.prepare import load_manifest
from vaflow.eval import gallery, oracle, report, scoring, toolkits
from vaflow.eval.evaluators import load_evaluators
from vaflow.eval.references import reference_audio
from vaflow.generate import default_device, load_models
from vaflow.generate.generator import read_wav
from vaflow.generate.samples import INDEX_FILE, SPEC_FILE
from vaflow.models import artifacts

__all__ = ["EMBEDDINGS", "SPLIT", "Evaluation", "evaluate_split", "generated_audio"]

SPLIT = "test"
EMBEDDINGS = "fd_embeddings.npz"  # the VAFlow row's FD embeddings, an artifact of the evaluate stage's run


def generated_audio(samples: Path, rate: int) -> tuple[list[str], np.ndarray]:
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


@dataclass
class Evaluation:
    """What the evaluate stage logs: the scored rows, their provenance, the report folder, the gallery's clips."""

    rows: list[scoring.RowScore]
    provenance: dict[str, Any]
    out: Path
    gallery_clips: list[Any]
    reference_emb: np.ndarray  # (N, E) the real test clips' FD embeddings, the reference of every row's FD

    def write_embeddings(self, path: Path, row: str = "vaflow") -> Path:
        """`row`'s FD embeddings (`ids`, `emb`) and the reference's (`reference`) as one .npz, from which a
        comparison of runs recomputes FD on the clips every run kept (vaflow.eval.grids)."""
        scored = next(r for r in self.rows if r.name == row).emb
        ids = list(scored)
        dim = self.reference_emb.shape[1]
        emb = np.stack([scored[i] for i in ids]) if ids else np.zeros((0, dim), np.float32)
        np.savez(path, ids=np.array(ids, dtype=str), emb=emb, reference=self.reference_emb)
        return path


def evaluate_split(cfg: Any, clip: Any, paths: Mapping[str, str | Path]) -> Evaluation:
    """Score the four rows (ground truth, WaveVAE ceiling, prior decoded, VAFlow) of the test split for an
    `evaluate` section `cfg`; writes table.md and the gallery under `paths["reports"]`. `paths`: the stage's
    folders (prepared, samples, evaluators, features, latents, model, vae, reports)."""
    samples = Path(paths["samples"])
    evaluators = load_evaluators(paths["evaluators"])
    classifier = evaluators["audio_classifier"]
    rate = int(classifier.card["sample_rate"])
    manifest = load_manifest(Path(paths["prepared"]) / "manifest.csv", SPLIT)
    clips = load_split(manifest.to_dict("records"), classifier.model.config, clip.duration)
    truth_folder = oracle.truth_dir(paths["prepared"])
    reference = scoring.make_reference(evaluators, clips, truth_folder)
    print(
        f"{len(clips)} test clips decoded ({len(clips.rejected)} left out); ground truth: {truth_folder or 'none'}"
    )

    features_spec = pairs.read_spec(paths["features"], pairs.FEATURES)
    models = load_models(
        paths["model"], paths["vae"], artifacts.feature_identity(features_spec), default_device()
    )
    spec = json.loads((samples / SPEC_FILE).read_text())
    refs = reference_audio(
        models, pairs.open_split(paths["features"], SPLIT, paths["latents"]), int(spec["seed"])
    )
    gen_ids, gen_audio = generated_audio(samples, rate)

    truth = toolkits.load_truth(Path(paths["evaluators"]))  # the reference evaluators' ground truth, if any
    suite = None if truth is None else toolkits.suite_from_card(truth.card, default_device())

    def score(name, ids, audio, **kw):
        keep = [k for k, i in enumerate(ids) if i in set(clips.ids)]  # clips the evaluators could decode
        row = scoring.score_row(name, [ids[k] for k in keep], audio[keep], rate, reference, evaluators,
                                cfg.onset_tolerance, cfg.is_splits, cfg.silent_db, **kw)  # fmt: skip
        if suite is not None:  # the same clips as the proxies score: left-out ones stay out
            left_out = {i for out in row.excluded.values() for i in out}
            use = [k for k in keep if ids[k] not in left_out]
            got = toolkits.score_row(suite, truth, [ids[k] for k in use], audio[use], rate, **kw)
            row.metrics.update({f"{toolkits.PREFIX}{k}": v for k, v in got.items()})
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
        "evaluators": {n: {k: e.identity()[k] for k in ("stands_in_for", "weights_hash")} for n, e in evaluators.items()},
        "fd_floor": calibration.get("fd_halves"),
        "fd_floor_n": calibration.get("fd_halves_n"),
        "oracle": truth_folder is not None,
        "onset_tolerance": cfg.onset_tolerance,
        "is_splits": cfg.is_splits,
        "silent_db": cfg.silent_db,
    }  # fmt: skip
    if truth is not None:
        provenance["reference"] = truth.card
    out = Path(paths["reports"])
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "table.md", report.markdown_table(rows, provenance))
    windows = {r.id: (r.path, float(r.start), float(r.duration)) for r in manifest.itertuples(index=False)}
    shown = [i for i in gen_ids if i in windows and i in set(clips.ids)][: cfg.gallery]
    gallery_clips = gallery.gallery_media(out, shown, rows[-1], reference, gen_ids, gen_audio, windows)
    gallery.write_gallery(
        out, rows, report.table_rows(rows), gallery_clips, report.provenance_lines(provenance)
    )

    return Evaluation(rows, provenance, out, gallery_clips, reference.emb)
