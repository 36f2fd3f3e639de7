"""The reference evaluators' use (paper §4.1 "Metrics", DESIGN §6): the networks of `vaflow.models.reference` loaded
from the `evaluators.reference` weight files, the test split's ground-truth features computed once, and a row of
generated audio scored the toolkits' way under metric names that say which evaluator produced them.

The protocol is pinned and recorded in every output: each evaluator's input pipeline (its module's PROTOCOL), the
resampler, the audio length scored, one sample per video, IB-VA ×100 and the sync classifier's seed.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF
from torch import nn
from tqdm import tqdm

from vaflow import atomic
from vaflow.config import ConfigError
from vaflow.data import media
from vaflow.data.clips import decode_clips
from vaflow.data.extract import ClipRejected
from vaflow.data.prepare import load_manifest
from vaflow.eval import metrics
from vaflow.generate.generator import read_wav
from vaflow.hashing import weights_hash
from vaflow.models.artifacts import MissingModelFileError
from vaflow.models.reference import (
    MissingPackageError,
    difffoley,
    imagebind,
    melception,
    panns,
    passt,
    synchformer,
)

__all__ = [
    "AUDIO_OUTPUTS",
    "CARD",
    "EVALUATORS",
    "METRICS",
    "PREFIX",
    "RESAMPLER",
    "Suite",
    "Truth",
    "ground_truth",
    "load_suite",
    "load_truth",
    "check_files",
    "score",
    "score_folder",
    "score_row",
    "suite_from_card",
    "test_split_truth",
]

# The paper's Table 1 column order, then DeSync and the PANNs trio (av-benchmark's tables).
METRICS = (
    "fd_passt",
    "fd_melception",
    "kl_passt",
    "kl_melception",
    "is_passt",
    "is_melception",
    "ib_va",
    "acc",
    "desync",
    "fd_panns",
    "kl_panns",
    "is_panns",
)
# evaluators.reference key -> the module of vaflow.models.reference holding its network (imported here, so that
# the stages' code deps hold them: a changed evaluator reruns the ground truth).
EVALUATORS = {
    "passt": passt,
    "melception": melception,
    "panns": panns,
    "imagebind": imagebind,
    "synchformer": synchformer,
    "sync_classifier": difffoley,
}
# Audio classifiers: the output each metric reads (FD: embedding; KL: logits; IS: the toolkit's IS logits).
AUDIO_OUTPUTS = {
    "passt": {"fd": "embedding", "kl": "logits", "is": "logits"},
    "melception": {"fd": "embedding", "kl": "logits", "is": "logits_unbiased"},
    "panns": {"fd": "embedding", "kl": "logits", "is": "logits"},
}
# A row's reference metrics in the evaluate stage's outputs: `vaflow.reference.fd_passt`, ... (the proxies keep
# the bare names `fd`, `ib_va`, `acc`, ...).
PREFIX = "reference."
DEMEAN = ("passt", "panns")  # read through av-benchmark's AudioDataset: each file's mean removed first
CARD = "reference.json"  # in the evaluators folder: files, hashes, protocol
TRUTH = "reference-{name}-{hash}.npz"  # ground-truth features of the test split, per evaluator and weights
RESAMPLER = "torchaudio.functional.resample (windowed sinc, Hann, lowpass_filter_width 6, rolloff 0.99)"
IS_SPLITS, IS_SEED = 10, 2020  # av-benchmark's compute_isc
SYNC_FPS, SYNC_FRAMES = 4.0, 32  # Diff-Foley's classifier: CAVP features at 4 fps, the first 32


def _module(name: str) -> ModuleType:
    return EVALUATORS[name]


@dataclass
class Suite:
    """The loaded reference evaluators (eval mode, on `device`) and what every output records of them."""

    models: dict[str, nn.Module]
    card: dict[str, Any]
    device: torch.device
    batch_size: int = 8
    seed: int = 0
    cavp_features: Path | None = None

    def metric_names(self) -> list[str]:
        """The metrics this suite computes, in METRICS order."""
        made = {m for name in self.models for m in _metrics_of(name)}
        return [m for m in METRICS if m in made]


def _metrics_of(name: str) -> tuple[str, ...]:
    if name in AUDIO_OUTPUTS:
        return (f"fd_{name}", f"kl_{name}", f"is_{name}")
    return {"imagebind": ("ib_va",), "synchformer": ("desync",), "sync_classifier": ("acc",)}[name]


def given(settings: Any) -> dict[str, str]:
    """The evaluators.reference weight files that are set: {name: path}."""
    return {name: getattr(settings, name) for name in EVALUATORS if getattr(settings, name)}


def check_files(settings: Any) -> None:
    """Before any work: every weight file (and the CAVP features folder) `settings` names exists, or a
    MissingModelFileError naming the evaluators.reference key and the file; a package an evaluator's network comes
    from is installed, or a MissingPackageError naming both."""
    for name, path in given(settings).items():
        requirement = getattr(_module(name), "REQUIREMENT", None)  # a package its network comes from
        if requirement and importlib.util.find_spec(requirement.split("==")[0]) is None:
            raise MissingPackageError(_module(name).EVALUATOR, requirement)
        if not Path(path).is_file():
            raise MissingModelFileError(
                f"evaluators.reference.{name}: {path}: no such file; the official {name} checkpoint (README, "
                "Reference evaluators) or '' to leave it out"
            )
    if settings.cavp_features and not Path(settings.cavp_features).is_dir():
        raise MissingModelFileError(
            f"evaluators.reference.cavp_features: {settings.cavp_features}: no such folder"
        )


def load_suite(settings: Any, device: torch.device | str = "cpu") -> Suite:
    """Every reference evaluator `settings` (an evaluators.reference section) names, loaded strictly from its file.

    A missing file, another model's file or a missing package is a UserError naming the evaluator, before any
    scoring. The card records each file, its weights hash, its module's PROTOCOL and how the suite runs.
    """
    device = torch.device(device)
    models, entries = {}, {}
    for name, path in given(settings).items():
        module = _module(name)
        models[name] = module.from_file(path).to(device)
        entries[name] = {
            "file": str(path),
            "weights_hash": weights_hash(path),
            "metrics": list(_metrics_of(name)),
            "protocol": module.PROTOCOL,
        }
    if "imagebind" in entries:
        entries["imagebind"]["ib_va_scale"] = 100
    if "sync_classifier" in entries:
        entries["sync_classifier"].update({"seed": settings.seed, "cavp_features": settings.cavp_features})
    card = {
        "resampler": RESAMPLER,
        "samples_per_video": 1,
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "cavp_features": settings.cavp_features,
        "evaluators": entries,
    }
    cavp = Path(settings.cavp_features) if settings.cavp_features else None
    return Suite(models, card, device, settings.batch_size, settings.seed, cavp)


def suite_from_card(card: Mapping[str, Any], device: torch.device | str = "cpu") -> Suite:
    """The suite a CARD describes, each file checked against the weights hash recorded when its ground truth was
    computed (a file changed since is a ConfigError: rerun the evaluators stage)."""
    for name, entry in card["evaluators"].items():
        if Path(entry["file"]).is_file() and weights_hash(entry["file"]) != entry["weights_hash"]:
            raise ConfigError(
                f"evaluators.reference.{name}: {entry['file']} changed since its ground truth was computed "
                f"(weights {entry['weights_hash']}); rerun the evaluators stage: dvc repro evaluators"
            )
    files = {name: entry["file"] for name, entry in card["evaluators"].items()}
    settings = SimpleNamespace(
        **{name: files.get(name, "") for name in EVALUATORS},
        seed=card["seed"],
        batch_size=card["batch_size"],
        cavp_features=card["cavp_features"],
    )
    return load_suite(settings, device)


# ----------------------------------------------------------------------------------------------------------------
# Features: audio (any evaluator) and video (ImageBind, Synchformer), batched
# ----------------------------------------------------------------------------------------------------------------


def _resampled(audio: np.ndarray, rate: int, target: int) -> torch.Tensor:
    wav = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    return wav if rate == target else AF.resample(wav, rate, target)


def _batched(fn: Callable[[torch.Tensor], Mapping[str, torch.Tensor]], wav: torch.Tensor, suite: Suite,
             desc: str) -> dict[str, np.ndarray]:  # fmt: skip
    parts: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for lo in tqdm(range(0, len(wav), suite.batch_size), desc=desc, unit="batch", leave=False):
            out = fn(wav[lo : lo + suite.batch_size].to(suite.device))
            for key, value in out.items():
                parts.setdefault(key, []).append(value.float().cpu().numpy())
    return {key: np.concatenate(v) for key, v in parts.items()}


def audio_outputs(suite: Suite, name: str, audio: np.ndarray, rate: int) -> dict[str, np.ndarray]:
    """Evaluator `name`'s outputs for audio (N, samples) at `rate` Hz, resampled to its rate: {output: (N, ...)}."""
    model, module = suite.models[name], _module(name)
    if name in DEMEAN:  # av-benchmark's AudioDataset removes each file's mean before resampling
        audio = audio - audio.mean(axis=1, keepdims=True)
    wav = _resampled(audio, rate, module.SAMPLE_RATE)
    if name in AUDIO_OUTPUTS:
        wanted = set(AUDIO_OUTPUTS[name].values())
        return _batched(lambda w: {k: getattr(model.features(w), k) for k in wanted}, wav, suite, name)
    if name == "imagebind":
        return _batched(lambda w: {"audio_emb": module.audio_features(model, w).embedding}, wav, suite, name)
    if name == "synchformer":
        return _batched(lambda w: {"afeats": model.afeats(module.fit_audio(w))}, wav, suite, name)
    if name == "sync_classifier":
        return _batched(lambda w: {"spec": module.spec(w)}, wav, suite, name)
    raise KeyError(name)


def video_outputs(suite: Suite, name: str, rows: Sequence[Mapping[str, Any]], duration: float
                  ) -> dict[str, np.ndarray]:  # fmt: skip
    """The video side of ImageBind (`video_emb`) or Synchformer (`vfeats`) for manifest rows (id, path, start),
    one clip at a time, decoded at its own size and the frame rate the toolkit reads: {output: (N, ...)}."""
    model, module = suite.models[name], _module(name)
    fps = module.FRAME_RATE if name == "imagebind" else module.VIDEO_FPS
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for row in tqdm(rows, desc=f"{name} video", unit="clip", leave=False):
            frames = media.read_frames(row["path"], fps, start=float(row["start"]), duration=duration)
            x = torch.from_numpy(frames).permute(0, 3, 1, 2)[None].to(suite.device)  # (1, T, 3, H, W) uint8
            if name == "imagebind":
                got = module.vision_features(model, x).embedding  # (1, E)
            else:
                got = model.vfeats(module.fit_frames(x))  # (1, S, 8, 768)
            out.append(got.float().cpu().numpy())
    key = "video_emb" if name == "imagebind" else "vfeats"
    return {key: np.concatenate(out)}


# ----------------------------------------------------------------------------------------------------------------
# The ground truth of the test split: computed once per evaluator file, reused by every experiment
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Truth:
    """The real test clips' features under each reference evaluator, in `ids` order."""

    ids: list[str]
    outputs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # evaluator -> output -> (N, ...)
    card: dict[str, Any] = field(default_factory=dict)  # CARD: files, hashes, protocol, clips, audio length

    def rows(self, ids: Sequence[str]) -> list[int]:
        where = {i: k for k, i in enumerate(self.ids)}
        missing = [i for i in ids if i not in where]
        if missing:
            raise ValueError(f"{len(missing)} clip(s) not among the reference test clips: {missing[:5]}")
        return [where[i] for i in ids]


def ground_truth(suite: Suite, rows: Sequence[Mapping[str, Any]], audio: np.ndarray, rate: int, duration: float,
                 out: Path) -> Truth:  # fmt: skip
    """Every evaluator's features of the real test clips (`rows`: manifest rows; `audio` (N, samples) at `rate`),
    written to `out` as one .npz per evaluator and weights hash beside the card, CARD."""
    ids = [str(r["id"]) for r in rows]
    truth = Truth(ids)
    out.mkdir(parents=True, exist_ok=True)
    for name in suite.models:
        got = audio_outputs(suite, name, audio, rate)
        if name in ("imagebind", "synchformer"):
            got.update(video_outputs(suite, name, rows, duration))
        truth.outputs[name] = got
        path = out / TRUTH.format(name=name, hash=suite.card["evaluators"][name]["weights_hash"])
        with atomic.replacing(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, ids=np.array(ids), **got)
    suite.card.update({"split": "test", "clips": len(ids), "audio_seconds": duration, "sample_rate": rate})
    atomic.write_json(out / CARD, suite.card)
    truth.card = suite.card
    return truth


def test_split_truth(
    settings: Any, clip: Any, prepared: Path, out: Path, device: torch.device | str
) -> Truth:
    """The evaluators stage's part: load the suite `settings` names, decode the test split's audio at
    clip.sample_rate (the rate every row is scored from) and write its ground truth to `out`."""
    suite = load_suite(settings, device)
    rows = load_manifest(Path(prepared) / "manifest.csv", "test").to_dict("records")
    n = round(clip.duration * clip.sample_rate)

    def decode(row: Mapping[str, Any]) -> tuple[np.ndarray]:
        audio = media.read_audio(
            row["path"], clip.sample_rate, start=float(row["start"]), duration=clip.duration
        )
        if len(audio) < n:
            raise ClipRejected(f"too short: {len(audio)} of {n} audio samples decoded")
        return (audio[:n],)

    decoded = decode_clips(rows, decode, progress=True)
    print(f"reference evaluators ({', '.join(suite.models)}): {len(decoded.rows)} test clips")
    audio = decoded.stack(0, (n,), torch.float32).numpy()
    return ground_truth(suite, decoded.rows, audio, clip.sample_rate, clip.duration, out)


def load_truth(folder: Path) -> Truth | None:
    """The ground truth (and its card) that `ground_truth` wrote to `folder`; None when it holds no CARD."""
    if not (folder / CARD).is_file():
        return None
    card = json.loads((folder / CARD).read_text())
    truth = Truth([], card=card)
    for name, entry in card["evaluators"].items():
        with np.load(folder / TRUTH.format(name=name, hash=entry["weights_hash"])) as data:
            truth.ids = [str(i) for i in data["ids"]]
            truth.outputs[name] = {k: data[k] for k in data.files if k != "ids"}
    return truth


# ----------------------------------------------------------------------------------------------------------------
# Scoring a row
# ----------------------------------------------------------------------------------------------------------------


def _cavp(suite: Suite, ids: Sequence[str]) -> np.ndarray:
    """Diff-Foley's CAVP features of each clip: (N, 32, D), the first 32 frames at 4 fps (D = 512)."""
    dim = suite.models["sync_classifier"].config.video_dim
    feats = []
    for clip_id in ids:
        path = suite.cavp_features / f"{clip_id}.npz"
        if not path.is_file():
            raise ConfigError(
                f"evaluators.reference.cavp_features: {path}: no CAVP features for clip {clip_id!r}"
            )
        with np.load(path) as data:
            feat = data["feat"]
        if feat.ndim != 2 or feat.shape[0] < SYNC_FRAMES or feat.shape[1] != dim:
            raise ConfigError(
                f"{path}: feat {feat.shape}, expected (>= {SYNC_FRAMES}, {dim}) at {SYNC_FPS:g} fps"
            )
        feats.append(feat[:SYNC_FRAMES])
    return np.stack(feats).astype(np.float32)


def score_row(suite: Suite, truth: Truth, ids: Sequence[str], audio: np.ndarray, rate: int,
              is_reference: bool = False) -> dict[str, float | None]:  # fmt: skip
    """`score` for a row of the evaluate stage's table: None for every metric when fewer than 2 clips are left, and
    for FD and KL of the real audio itself (`is_reference`: 0 by construction, not shown)."""
    if len(ids) < 2:
        return dict.fromkeys(suite.metric_names())
    m: dict[str, float | None] = dict(score(suite, truth, ids, audio, rate))
    if is_reference:
        m.update({k: None for k in m if k.startswith(("fd_", "kl_"))})
    return m


def score(suite: Suite, truth: Truth, ids: Sequence[str], audio: np.ndarray, rate: int) -> dict[str, float]:
    """The reference metrics of generated audio (N, samples) at `rate`, one row per clip id (draw 0 of each),
    against the ground truth: {metric: value} for every metric the suite computes (METRICS names)."""
    at = truth.rows(ids)
    m: dict[str, float] = {}
    for name in suite.models:
        gen = audio_outputs(suite, name, audio, rate)
        gt = {k: v[at] for k, v in truth.outputs.get(name, {}).items()}  # paired with the generated rows
        if name in AUDIO_OUTPUTS:
            out = AUDIO_OUTPUTS[name]
            m[f"fd_{name}"] = metrics.frechet_distance(gen[out["fd"]], truth.outputs[name][out["fd"]]).value
            m[f"kl_{name}"] = metrics.kl_divergence(
                truth.outputs[name][out["kl"]], gen[out["kl"]], truth.ids, ids
            )
            splits = min(IS_SPLITS, len(ids))
            m[f"is_{name}"] = metrics.inception_score(gen[out["is"]], splits=splits, seed=IS_SEED)[0]
        elif name == "imagebind":
            m["ib_va"] = metrics.ib_score(gt["video_emb"], gen["audio_emb"])
        elif name == "synchformer":
            v, a = (torch.from_numpy(x).to(suite.device) for x in (gt["vfeats"], gen["afeats"]))
            with torch.inference_mode():
                m["desync"] = float(suite.models[name].desync(v, a).desync.float().mean())
        elif name == "sync_classifier":
            model = suite.models[name]
            generator = torch.Generator().manual_seed(suite.seed)  # on the CPU, as align_acc.py draws it
            spec = torch.from_numpy(gen["spec"]).to(suite.device)
            video = torch.from_numpy(_cavp(suite, ids)).to(suite.device)
            with torch.inference_mode():
                p = torch.cat([
                    model.probability(spec[lo : lo + suite.batch_size], video[lo : lo + suite.batch_size], generator=generator)
                    for lo in range(0, len(ids), suite.batch_size)
                ])  # fmt: skip
            m["acc"] = 100 * metrics.sync_accuracy(p.float().cpu().numpy())
    return {k: (v if math.isfinite(v) else float("nan")) for k, v in m.items()}


def score_folder(folder: Path, evaluators: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Score any folder of generated wavs named `<clip id>.wav` (another system's outputs, say) against the test
    split whose ground truth the evaluators stage wrote to `evaluators`, with exactly this protocol.

    Each file is resampled to the split's rate and cut or zero-padded to its clip length where it differs (both
    counted in the result). Returns {"metrics", "clips", "protocol", "resampled", "fitted"}.
    """
    folder, evaluators = Path(folder), Path(evaluators)
    truth = load_truth(evaluators)
    if truth is None:
        raise ConfigError(
            f"{evaluators}: no {CARD}; set evaluators.reference (the weight files) and run: dvc repro evaluators"
        )
    wavs = sorted(folder.glob("*.wav"))
    if not wavs:
        raise ConfigError(f"{folder}: no .wav files (expected one <clip id>.wav per test clip)")
    unknown = [w.name for w in wavs if w.stem not in set(truth.ids)]
    if unknown:
        raise ConfigError(
            f"{folder}: {len(unknown)} wav(s) named after no test clip: {', '.join(unknown[:5])}"
        )
    rate, n = int(truth.card["sample_rate"]), round(truth.card["audio_seconds"] * truth.card["sample_rate"])
    audio, resampled, fitted = [], 0, 0
    for path in wavs:
        wav, got = read_wav(path)
        if got != rate:
            wav, resampled = _resampled(wav, got, rate).numpy(), resampled + 1
        fitted += len(wav) != n
        audio.append(np.pad(wav[:n], (0, max(0, n - len(wav)))))
    ids = [w.stem for w in wavs]
    suite = suite_from_card(truth.card, device)
    return {
        "metrics": score(suite, truth, ids, np.stack(audio), rate),
        "clips": len(ids),
        "of": len(truth.ids),
        "resampled": resampled,
        "fitted": fitted,
        "protocol": truth.card,
    }
