"""Training and calibrating the proxy evaluators (DESIGN §6) on the pipeline's own clips.

Each network is trained on the *train* split decoded into memory (the synthetic world's 256 clips of 2 s are tens of
MB), deterministically for a seed (seeded initial weights, batch order, shifts and swaps), then calibrated on real
test clips through the same functions the `evaluate` stage applies (`vaflow.eval.evaluators`).

Sections: the stage's settings, data, training, calibration.
"""

from __future__ import annotations

import math
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaflow import atomic
from vaflow.config.section import ConfigError
from vaflow.data.clips import ClipSet, load_split
from vaflow.data.prepare import load_manifest
from vaflow.eval import metrics
from vaflow.eval.evaluators import (
    NAMES,
    Evaluator,
    audio_embed_and_logits,
    av_embeddings,
    load_evaluators,
    log_mel_of,
    save_evaluator,
    sync_probability,
)
from vaflow.models.evaluators import (
    AudioClassifier,
    AVEmbedder,
    EvaluatorConfig,
    SyncClassifier,
    mel_settings,
)

__all__ = [
    "calibrate",
    "evaluator_config",
    "train_audio_classifier",
    "train_av_embedder",
    "train_sync_classifier",
]


def evaluator_config(settings: Any, sample_rate: int, num_classes: int) -> EvaluatorConfig:
    """The networks' config for `settings` (an `evaluators` section) at `sample_rate` with `num_classes` labels."""
    hop, n_fft = mel_settings(sample_rate)
    return EvaluatorConfig(
        sample_rate=sample_rate,
        n_mels=settings.n_mels,
        hop=hop,
        n_fft=n_fft,
        fps=settings.fps,
        side=settings.side,
        embed_dim=settings.embed_dim,
        av_dim=settings.av_dim,
        num_classes=num_classes,
    )


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def _fit(
    model: nn.Module,
    n: int,
    loss_of: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    settings: Any,
) -> list[float]:
    """AdamW over `settings.epochs` seeded shuffles of n clips; loss_of(batch indices, generator) -> loss.

    Returns the mean loss of each epoch. A last batch of fewer than 2 clips is skipped (InfoNCE and swapped
    pairs need another clip in the batch).
    """
    if n < 2:
        raise ValueError(f"evaluator training needs at least 2 clips, got {n}")
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(settings.seed)  # batch order, shifts and swaps: one seeded stream
    model.train()
    history = []
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=g)
        losses = []
        for start in range(0, n, settings.batch_size):
            idx = order[start : start + settings.batch_size]
            if len(idx) < 2:
                continue
            loss = loss_of(idx, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        history.append(float(np.mean(losses)))
    model.eval()
    return history


def _fit_front_end(model: nn.Module, mel: torch.Tensor) -> None:
    """Set the front end's normalisation to the train split's log-mel mean and std (scalars)."""
    model.front.mean.fill_(float(mel.mean()))
    model.front.std.fill_(float(mel.std().clamp_min(1e-3)))


def train_audio_classifier(
    data: ClipSet, labels: list[str], config: EvaluatorConfig, settings: Any
) -> tuple[AudioClassifier, list[float]]:
    """Cross-entropy on the train clips' labels -> (classifier, loss per epoch)."""
    torch.manual_seed(settings.seed)  # the same initial weights every run
    model = AudioClassifier(config)
    mel = log_mel_of(model, data.audio)  # (N, n_mels, F), once
    _fit_front_end(model, mel)
    target = torch.tensor([labels.index(label) for label in data.labels])

    def loss_of(idx, g):
        _, logits = model(mel[idx])  # (B, C)
        return F.cross_entropy(logits, target[idx])

    return model, _fit(model, len(data), loss_of, settings)


def train_av_embedder(
    data: ClipSet, config: EvaluatorConfig, settings: Any
) -> tuple[AVEmbedder, list[float]]:
    """Symmetric InfoNCE (CLIP's loss) of aligned clips, the other clips of the batch as negatives."""
    torch.manual_seed(settings.seed)
    model = AVEmbedder(config)
    mel = log_mel_of(model, data.audio)
    _fit_front_end(model, mel)

    def loss_of(idx, g):
        v, a = model(data.frames[idx], mel[idx])  # (B, D), (B, D)
        scale = model.logit_scale.clamp(max=math.log(100)).exp()  # CLIP caps the learnt scale at 100
        logits = scale * v @ a.T  # (B, B): row i's positive is column i
        target = torch.arange(len(idx))
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    return model, _fit(model, len(data), loss_of, settings)


def _shift_range(n_steps: int, steps_per_second: float, min_shift: float) -> tuple[int, int]:
    """[lo, hi] circular shifts (in steps) at least `min_shift` seconds away from 0 in both directions."""
    lo = max(1, math.ceil(min_shift * steps_per_second))
    hi = n_steps - lo
    if hi < lo:
        raise ValueError(
            f"clips of {n_steps / steps_per_second:.2f} s allow no circular shift of {min_shift} s"
        )
    return lo, hi


def train_sync_classifier(
    data: ClipSet, config: EvaluatorConfig, settings: Any
) -> tuple[SyncClassifier, list[float]]:
    """Binary cross-entropy: aligned pairs (1) vs the same clip's audio shifted circularly by >= min_shift or
    another clip's audio (0), half of each, one negative per positive (Diff-Foley's sync classifier)."""
    torch.manual_seed(settings.seed)
    model = SyncClassifier(config)
    mel = log_mel_of(model, data.audio)  # (N, n_mels, F)
    _fit_front_end(model, mel)
    lo, hi = _shift_range(mel.shape[2], config.sample_rate / config.hop, settings.min_shift)

    def loss_of(idx, g):
        b = len(idx)
        shifts = torch.randint(lo, hi + 1, (b,), generator=g)
        shifted = torch.stack([m.roll(int(k), dims=-1) for m, k in zip(mel[idx], shifts, strict=True)])
        swapped = mel[idx.roll(1)]  # every clip gets another clip's audio
        use_shift = (torch.rand(b, generator=g) < 0.5).view(b, 1, 1)
        negatives = torch.where(use_shift, shifted, swapped)  # (B, n_mels, F)
        video = model.video_features(data.frames[idx])  # (B, C, T): one pass serves both pairs of a clip
        logits = model.score(torch.cat([video, video]), torch.cat([mel[idx], negatives]))  # (2B,)
        target = torch.cat([torch.ones(b), torch.zeros(b)])
        return F.binary_cross_entropy_with_logits(logits, target)

    return model, _fit(model, len(data), loss_of, settings)


# ----------------------------------------------------------------------------------------------------------------
# Calibration on real clips
# ----------------------------------------------------------------------------------------------------------------


def _shift_audio(audio: torch.Tensor, sample_rate: int, min_shift: float, seed: int) -> torch.Tensor:
    """Each row of audio (N, samples) rolled circularly by a seeded shift of >= min_shift seconds."""
    lo, hi = _shift_range(audio.shape[1], sample_rate, min_shift)
    shifts = torch.randint(lo, hi + 1, (len(audio),), generator=torch.Generator().manual_seed(seed))
    return torch.stack([a.roll(int(k)) for a, k in zip(audio, shifts, strict=True)])


def calibrate(
    models: Mapping[str, nn.Module], data: ClipSet, labels: list[str], min_shift: float, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Calibration figures of each evaluator in `models` on real clips `data` (DESIGN §6) -> {name: {figure: x}}.

    - audio_classifier: accuracy on the true labels (chance 1 / C); FD between two seeded halves of the clips'
      embeddings (the floor a generator can reach at that N), with `fd_halves_reliable` = N/2 > embed_dim;
    - av_embedder: IB-VA of real pairs vs shuffled pairs (each video with the next clip's audio);
    - sync_classifier: Acc. on real aligned pairs (high), on shifted real pairs and on swapped pairs (low).
    """
    out: dict[str, dict[str, float]] = {}
    n = len(data)
    if n == 0:
        return out  # nothing to calibrate on: the figures are absent, not zero
    if "audio_classifier" in models:
        model = models["audio_classifier"]
        emb, logits = audio_embed_and_logits(model, data.audio, model.config.sample_rate)
        known = [i for i, label in enumerate(data.labels) if label in labels]
        truth = np.array([labels.index(data.labels[i]) for i in known])
        fig = {"accuracy": float((logits[known].argmax(1) == truth).mean()) if known else float("nan")}
        fig.update({"accuracy_chance": 1 / len(labels), "clips": n})
        if n >= 4:
            half = np.random.RandomState(seed).permutation(n)[: 2 * (n // 2)].reshape(2, -1)
            with warnings.catch_warnings():  # an unreliable FD is flagged in the figures instead
                warnings.simplefilter("ignore", UserWarning)
                fd = metrics.frechet_distance(emb[half[0]], emb[half[1]])
            fig.update(
                {"fd_halves": fd.value, "fd_halves_n": n // 2, "fd_halves_reliable": float(fd.reliable)}
            )
        out["audio_classifier"] = fig
    if "av_embedder" in models and n >= 2:
        v, a = av_embeddings(models["av_embedder"], data.frames, data.audio)
        out["av_embedder"] = {
            "ib_real": metrics.ib_score(v, a),
            "ib_shuffled": metrics.ib_score(v, np.roll(a, 1, axis=0)),
            "clips": n,
        }
    if "sync_classifier" in models and n >= 2:
        model = models["sync_classifier"]
        shifted = _shift_audio(data.audio, model.config.sample_rate, min_shift, seed)
        out["sync_classifier"] = {
            "acc_aligned": metrics.sync_accuracy(sync_probability(model, data.frames, data.audio)),
            "acc_shifted": metrics.sync_accuracy(sync_probability(model, data.frames, shifted)),
            "acc_swapped": metrics.sync_accuracy(sync_probability(model, data.frames, data.audio.roll(1, 0))),
            "clips": n,
        }
    return out


# ----------------------------------------------------------------------------------------------------------------
# The evaluators stage's work: train all three, or import them; calibrate on the test split
# ----------------------------------------------------------------------------------------------------------------


def decoded_split(prepared: Path, split: str, cfg: EvaluatorConfig, duration: float) -> ClipSet:
    """One split of prepare's manifest decoded for the evaluators, its rejected clips printed."""
    data = load_split(load_manifest(prepared / "manifest.csv", split).to_dict("records"), cfg, duration)
    print(f"{split}: {len(data)} clips decoded, {len(data.rejected)} rejected")
    for clip_id, reason in data.rejected:
        print(f"  rejected {clip_id}: {reason}")
    return data


def train_all(settings: Any, clip: Any, prepared: Path, out: Path) -> dict[str, Evaluator]:
    """Train the three evaluators on the train split, calibrate them on the test split, save them to `out`."""
    labels = sorted(set(load_manifest(prepared / "manifest.csv", "train")["label"]))
    cfg = evaluator_config(settings, clip.sample_rate, len(labels))
    data = decoded_split(prepared, "train", cfg, clip.duration)
    if len(data) < 2:
        raise ConfigError(f"{len(data)} usable training clips: the evaluators need at least 2")
    models, losses = {}, {}
    models["audio_classifier"], losses["audio_classifier"] = train_audio_classifier(
        data, labels, cfg, settings
    )
    models["av_embedder"], losses["av_embedder"] = train_av_embedder(data, cfg, settings)
    models["sync_classifier"], losses["sync_classifier"] = train_sync_classifier(data, cfg, settings)
    test = decoded_split(prepared, "test", cfg, clip.duration)
    figures = calibrate(models, test, labels, settings.min_shift, settings.seed)
    trained_on = {"split": "train", "clips": len(data), "epochs": settings.epochs, "seed": settings.seed}
    loaded = {}
    for name, model in models.items():
        extra = {
            "training": {**trained_on, "final_loss": losses[name][-1]},
            "calibration": {"split": "test", **figures.get(name, {})},
        }
        loaded[name] = Evaluator(name, model, save_evaluator(out, name, model, labels, extra))
    return loaded


def import_all(settings: Any, clip: Any, prepared: Path, out: Path) -> dict[str, Evaluator]:
    """Copy the evaluators of `settings.source` to `out`, check their cards, recalibrate on this test split."""
    source = Path(settings.source)
    rate = load_evaluators(source)["audio_classifier"].card["sample_rate"]  # refuse a bad folder first
    if rate != clip.sample_rate:
        raise ConfigError(
            f"{source}: evaluators run at {rate} Hz, the pipeline at clip.sample_rate={clip.sample_rate}"
        )
    out.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        for suffix in (".safetensors", ".json"):
            shutil.copyfile(source / f"{name}{suffix}", out / f"{name}{suffix}")
    loaded = load_evaluators(out)
    labels = loaded["audio_classifier"].card["labels"]
    test = decoded_split(prepared, "test", loaded["audio_classifier"].model.config, clip.duration)
    figures = calibrate(
        {n: e.model for n, e in loaded.items()}, test, labels, settings.min_shift, settings.seed
    )
    for name, evaluator in loaded.items():  # this pipeline's calibration, beside the one the card came with
        evaluator.card["calibration_here"] = {"split": "test", **figures.get(name, {})}
        atomic.write_json(out / f"{name}.json", evaluator.card)
    return loaded
