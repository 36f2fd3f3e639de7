"""Training and calibrating the proxy evaluators (DESIGN §6) on the pipeline's own clips.

Each network is trained on the *train* split decoded into memory (the synthetic world's 256 clips of 2 s are tens of
MB), deterministically for a seed (seeded initial weights, batch order, shifts and swaps), then calibrated on real
test clips through the same functions the `evaluate` stage applies (`vaflow.eval.evaluators`).

Sections: the stage's settings, data, training, calibration.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaflow.data import media
from vaflow.eval import metrics
from vaflow.eval.evaluators import audio_embed_and_logits, av_embeddings, log_mel_of, sync_probability
from vaflow.models.evaluators import (
    AudioClassifier,
    AVEmbedder,
    EvaluatorConfig,
    SyncClassifier,
    mel_settings,
)

__all__ = [
    "ClipSet",
    "calibrate",
    "evaluator_config",
    "load_split",
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
# Data: a split decoded into memory
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ClipSet:
    """Decoded clips: frames (N, T, side, side, 3) uint8 and audio (N, samples) float32, in `ids` order."""

    ids: list[str]
    labels: list[str]
    frames: torch.Tensor
    audio: torch.Tensor
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (id, reason) of clips left out

    def __len__(self) -> int:
        return len(self.ids)


def load_split(
    rows: Iterable[Mapping[str, Any]], config: EvaluatorConfig, duration: float, workers: int = 2
) -> ClipSet:
    """Decode every clip window of `rows` (manifest rows: id, path, start, duration, label) for `config`.

    Each window gives T = round(duration · fps) frames at side × side and round(duration · sample_rate) samples.
    A clip that fails to decode or falls short is left out and listed in `rejected`; nothing is padded.
    """
    rows = list(rows)
    n_frames = max(1, round(duration * config.fps))
    n_samples = round(duration * config.sample_rate)

    def decode(row):
        try:
            size = (config.side, config.side)
            frames = media.read_frames(
                row["path"], config.fps, size=size, start=row["start"], duration=duration
            )
            audio = media.read_audio(row["path"], config.sample_rate, start=row["start"], duration=duration)
        except media.MediaError as err:
            return err.reason
        if len(frames) < n_frames or len(audio) < n_samples:
            return f"too short: {len(frames)}/{n_frames} frames, {len(audio)}/{n_samples} samples"
        return frames[:n_frames], audio[:n_samples]

    ids, labels, frames, audio, rejected = [], [], [], [], []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for row, result in zip(rows, pool.map(decode, rows), strict=True):
            if isinstance(result, str):
                rejected.append((str(row["id"]), result))
                continue
            ids.append(str(row["id"]))
            labels.append(str(row["label"]))
            frames.append(result[0])
            audio.append(result[1])
    if not ids:
        s = config.side
        empty = torch.empty(0, n_frames, s, s, 3, dtype=torch.uint8)
        return ClipSet([], [], empty, torch.empty(0, n_samples), rejected)
    return ClipSet(
        ids, labels, torch.from_numpy(np.stack(frames)), torch.from_numpy(np.stack(audio)), rejected
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
