"""Stage `evaluators`: the proxy evaluators of DESIGN §6 (audio classifier, video-audio embedding model, sync
classifier), trained on the train split (mode train) or imported from a folder of saved ones (mode import), then
calibrated on the real test clips; writes `<name>.safetensors` + `<name>.json` per evaluator and
metrics/evaluators.json."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from vaflow import atomic, config
from vaflow.data.prepare import load_manifest
from vaflow.errors import exit_on_user_error
from vaflow.eval import evaluators as ev
from vaflow.models.evaluators import EvaluatorConfig
from vaflow.tracking import Tracker
from vaflow.train import evaluators as et

STAGE = "evaluators"


def _split(prepared: Path, split: str, cfg: EvaluatorConfig, duration: float) -> et.ClipSet:
    data = et.load_split(load_manifest(prepared / "manifest.csv", split).to_dict("records"), cfg, duration)
    print(f"{split}: {len(data)} clips decoded, {len(data.rejected)} rejected")
    for clip_id, reason in data.rejected:
        print(f"  rejected {clip_id}: {reason}")
    return data


def train(settings: Any, clip: config.ClipConfig, prepared: Path, out: Path) -> dict[str, ev.Evaluator]:
    """Train the three evaluators on the train split, calibrate them on the test split, save them to `out`."""
    labels = sorted(set(load_manifest(prepared / "manifest.csv", "train")["label"]))
    cfg = et.evaluator_config(settings, clip.sample_rate, len(labels))
    data = _split(prepared, "train", cfg, clip.duration)
    if len(data) < 2:
        raise config.ConfigError(f"{len(data)} usable training clips: the evaluators need at least 2")
    models, losses = {}, {}
    models["audio_classifier"], losses["audio_classifier"] = et.train_audio_classifier(
        data, labels, cfg, settings
    )
    models["av_embedder"], losses["av_embedder"] = et.train_av_embedder(data, cfg, settings)
    models["sync_classifier"], losses["sync_classifier"] = et.train_sync_classifier(data, cfg, settings)
    test = _split(prepared, "test", cfg, clip.duration)
    figures = et.calibrate(models, test, labels, settings.min_shift, settings.seed)
    trained_on = {"split": "train", "clips": len(data), "epochs": settings.epochs, "seed": settings.seed}
    loaded = {}
    for name, model in models.items():
        extra = {
            "training": {**trained_on, "final_loss": losses[name][-1]},
            "calibration": {"split": "test", **figures.get(name, {})},
        }
        loaded[name] = ev.Evaluator(name, model, ev.save_evaluator(out, name, model, labels, extra))
    return loaded


def import_(settings: Any, clip: config.ClipConfig, prepared: Path, out: Path) -> dict[str, ev.Evaluator]:
    """Copy the evaluators of `settings.source` to `out`, check their cards, recalibrate on this test split."""
    source = Path(settings.source)
    rate = ev.load_evaluators(source)["audio_classifier"].card["sample_rate"]  # refuse a bad folder first
    if rate != clip.sample_rate:
        raise config.ConfigError(
            f"{source}: evaluators run at {rate} Hz, the pipeline at clip.sample_rate={clip.sample_rate}"
        )
    out.mkdir(parents=True, exist_ok=True)
    for name in ev.NAMES:
        for suffix in (".safetensors", ".json"):
            shutil.copyfile(source / f"{name}{suffix}", out / f"{name}{suffix}")
    loaded = ev.load_evaluators(out)
    labels = loaded["audio_classifier"].card["labels"]
    test = _split(prepared, "test", loaded["audio_classifier"].model.config, clip.duration)
    figures = et.calibrate(
        {n: e.model for n, e in loaded.items()}, test, labels, settings.min_shift, settings.seed
    )
    for name, evaluator in loaded.items():  # this pipeline's calibration, beside the one the card came with
        evaluator.card["calibration_here"] = {"split": "test", **figures.get(name, {})}
        atomic.write_json(out / f"{name}.json", evaluator.card)
    return loaded


def run(settings: Any, clip: config.ClipConfig, prepared: Path, out: Path, tracker: Tracker) -> None:
    """The stage's work for an `evaluators` section (`settings`): train or import, then log the figures."""
    if 2 * settings.min_shift > clip.duration:
        raise config.ConfigError(
            f"evaluators.min_shift={settings.min_shift} s: a {clip.duration} s clip allows circular shifts of at "
            f"most {clip.duration / 2} s from alignment"
        )
    loaded = (train if settings.mode == "train" else import_)(settings, clip, Path(prepared), Path(out))
    final: dict[str, float] = {}
    for name, evaluator in loaded.items():
        card = evaluator.card
        figures = card.get("calibration_here") or card["calibration"]
        final.update({f"{name}.{k}": v for k, v in figures.items() if isinstance(v, int | float)})
        tracker.set_tags({f"evaluator.{name}.weight_hash": card["weight_hash"]})
        tracker.log_artifact(Path(out) / f"{name}.json")
        shown = ", ".join(f"{k} {v:.3f}" for k, v in figures.items() if isinstance(v, float))
        print(f"{name} ({card['weight_hash']}): {shown}")
    tracker.log_final(final)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", required=True, help="prepare's output folder (manifest.csv)")
    parser.add_argument("--out", required=True, help="evaluators folder to write (<name>.safetensors/.json)")
    parser.add_argument("--metrics", required=True, help="folder of metrics/evaluators.json")
    args = parser.parse_args(argv)
    params = config.load(args.params)
    tracked = {STAGE: params.evaluators, "clip": params.clip}
    with Tracker(STAGE, params=tracked, metrics_dir=args.metrics) as tracker:
        run(params.evaluators, params.clip, Path(args.prepared), Path(args.out), tracker)


if __name__ == "__main__":
    main()
