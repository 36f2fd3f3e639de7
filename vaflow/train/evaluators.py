"""Training and calibrating the proxy evaluators (DESIGN §6) on the pipeline's own clips.

The three networks are trained together by the shared Trainer on the *train* split, deterministically for a seed
(initial weights, batch order, shifts and swaps) and resumably, then calibrated on real test clips through the same
functions the `evaluate` stage applies (`vaflow.eval.evaluators`). The train split is decoded into memory when it
fits `evaluators.trainer.in_memory_mb` (the synthetic world's 256 clips of 2 s are tens of MB), else streamed
(`vaflow.data.clips`): the front end's log-mel mean and std then come from per-clip moments gathered while the
split is checked, so no pass holds the split.

Sections: the stage's settings, data, training, calibration.
"""

from __future__ import annotations

import math
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaflow import atomic
from vaflow.config.section import ConfigError
from vaflow.data.clips import (
    ClipBatches,
    ClipSet,
    DecodedClips,
    MemoryClips,
    StreamedClips,
    load_split,
    open_clips,
    read_window,
    report_decoded,
)
from vaflow.data.prepare import load_manifest
from vaflow.eval import metrics
from vaflow.eval.evaluators import (
    NAMES,
    Evaluator,
    audio_embed_and_logits,
    av_embeddings,
    load_evaluators,
    save_evaluator,
    sync_probability,
)
from vaflow.models.evaluators import (
    AudioClassifier,
    AVEmbedder,
    EvaluatorConfig,
    MelFrontEnd,
    SyncClassifier,
    mel_settings,
)
from vaflow.train.checkpoint import run_dir
from vaflow.train.trainer import Trainer

__all__ = [
    "EvaluatorObjective",
    "calibrate",
    "evaluator_config",
    "import_all",
    "open_train_clips",
    "pooled_mean_std",
    "sync_negatives",
    "train_all",
    "train_evaluators",
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
# Data: the train split in memory or streamed, and its log-mel mean and std
# ----------------------------------------------------------------------------------------------------------------


def _moments(x: np.ndarray) -> tuple[np.ndarray]:
    """(count, mean, sum of squared deviations from the mean) of `x`, in float64: one clip's share of the split's
    mean and std."""
    x = x.astype(np.float64)
    mean = x.mean()
    return (np.array([x.size, mean, np.square(x - mean).sum()]),)


def pooled_mean_std(moments: Sequence[np.ndarray]) -> tuple[float, float]:
    """Mean and unbiased std of the union of sets given by their (count, mean, squared deviations) `moments`
    (Chan et al.'s pairwise combination, exact up to float64 rounding)."""
    n, mean, m2 = np.stack(moments).T
    total = n.sum()
    pooled = float((n * mean).sum() / total)
    var = (m2.sum() + (n * np.square(mean - pooled)).sum()) / (total - 1)
    return pooled, float(np.sqrt(var))


def open_train_clips(
    rows: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    config: EvaluatorConfig,
    duration: float,
    workers: int,
    in_memory_mb: float,
    progress: bool = True,
) -> tuple[MemoryClips | StreamedClips, DecodedClips, tuple[float, float] | None]:
    """The train clips of `rows` as {"frames", "mel", "label"} (`clips.open_clips`, `label` the index in `labels`)
    -> (store, the decode's verdict, (mean, std) of the kept clips' log-mel, None below 2 clips).

    In memory the log-mel is computed once in chunks of 64 clips and its mean and std taken over the whole tensor;
    streamed, each batch's clips get theirs alone (equal to the chunked one to float rounding) and the mean and std
    are pooled from each clip's moments, gathered while the split is checked. The std is at least 1e-3.
    """
    n_frames = max(1, round(duration * config.fps))
    n_samples = round(duration * config.sample_rate)
    side, front = config.side, MelFrontEnd(config)
    index = {label: i for i, label in enumerate(labels)}

    def decode(row: Mapping[str, Any]) -> dict[str, np.ndarray]:
        frames, audio = read_window(row, config.fps, side, config.sample_rate, duration, n_frames, n_samples)
        return {"frames": frames, "audio": audio}

    def mel_of(audio: np.ndarray) -> np.ndarray:  # one clip's (samples,) -> (n_mels, F)
        return front.mel(torch.from_numpy(audio)[None])[0].numpy()

    shapes = {"frames": (n_frames, side, side, 3), "audio": (n_samples,)}
    clip_bytes = n_frames * side * side * 3 + n_samples * 4
    summary = lambda arrays: _moments(mel_of(arrays[1]))  # noqa: E731
    store, kept = open_clips(rows, decode, shapes, clip_bytes, in_memory_mb, workers, progress, summary)
    if isinstance(store, StreamedClips):

        def streamed(row: Mapping[str, Any]) -> dict[str, np.ndarray]:
            clip = decode(row)
            label = np.int64(index[str(row["label"])])
            return {"frames": clip["frames"], "mel": mel_of(clip["audio"]), "label": label}

        mel_shape = mel_of(np.zeros(n_samples, np.float32)).shape
        shapes = {"frames": shapes["frames"], "mel": mel_shape, "label": ()}
        norm = None
        if len(kept.parts) >= 2:
            mean, std = pooled_mean_std([p[0] for p in kept.parts])
            norm = (mean, max(std, 1e-3))
        return StreamedClips(store.rows, streamed, shapes, workers), kept, norm
    audio = store.tensors["audio"]  # (N, samples)
    mel = torch.cat([front.mel(chunk) for chunk in audio.split(64)]) if len(audio) else audio
    norm = (float(mel.mean()), float(mel.std().clamp_min(1e-3))) if len(mel) >= 2 else None
    label = torch.tensor([index[str(r["label"])] for r in kept.rows], dtype=torch.int64)
    return MemoryClips({"frames": store.tensors["frames"], "mel": mel, "label": label}), kept, norm


# ----------------------------------------------------------------------------------------------------------------
# Training: the three networks as one objective of the shared Trainer
# ----------------------------------------------------------------------------------------------------------------


def _shift_range(n_steps: int, steps_per_second: float, min_shift: float) -> tuple[int, int]:
    """[lo, hi] circular shifts (in steps) at least `min_shift` seconds away from 0 in both directions."""
    lo = max(1, math.ceil(min_shift * steps_per_second))
    hi = n_steps - lo
    if hi < lo:
        raise ValueError(
            f"clips of {n_steps / steps_per_second:.2f} s allow no circular shift of {min_shift} s"
        )
    return lo, hi


class EvaluatorObjective(nn.Module):
    """The three evaluators' losses as one module forward: their parameters are disjoint, so AdamW trains each on
    its own loss exactly as three optimisers would (the trainer's gradient clipping, when on, couples them).

    - audio_classifier: cross-entropy on the clips' labels;
    - av_embedder: symmetric InfoNCE (CLIP's loss) of aligned clips, the batch's other clips as negatives;
    - sync_classifier: binary cross-entropy, aligned pairs (1) vs one negative per clip (0): its own audio shifted
      circularly by >= min_shift, or another clip's audio, half of each (Diff-Foley's sync classifier).
    """

    def __init__(self, nets: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleDict(dict(nets))

    def forward(
        self, frames: torch.Tensor, mel: torch.Tensor, label: torch.Tensor, negative: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Frames (B, T, side, side, 3), log-mel (B, n_mels, F), label (B,), the sync negatives' log-mel
        (B, n_mels, F) -> (sum of the three losses, {name: loss} detached)."""
        _, logits = self.nets["audio_classifier"](mel)  # (B, C)
        parts = {"audio_classifier": F.cross_entropy(logits, label)}
        av = self.nets["av_embedder"]
        v, a = av(frames, mel)  # (B, D), (B, D)
        scale = av.logit_scale.clamp(max=math.log(100)).exp()  # CLIP caps the learnt scale at 100
        sim = scale * v @ a.T  # (B, B): row i's positive is column i
        diagonal = torch.arange(len(v), device=sim.device)
        parts["av_embedder"] = (F.cross_entropy(sim, diagonal) + F.cross_entropy(sim.T, diagonal)) / 2
        sync = self.nets["sync_classifier"]
        video = sync.video_features(frames)  # (B, C, T): one pass serves both pairs of a clip
        scores = sync.score(torch.cat([video, video]), torch.cat([mel, negative]))  # (2B,)
        target = torch.cat([torch.ones(len(mel)), torch.zeros(len(mel))]).to(scores)
        parts["sync_classifier"] = F.binary_cross_entropy_with_logits(scores, target)
        total = sum(parts.values())
        return total, {name: loss.detach() for name, loss in parts.items()}


def sync_negatives(mel: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """One negative per clip of a batch's log-mel (B, n_mels, F): a circular shift of lo..hi frames of its own
    audio or the next clip's audio, half of each, drawn from torch's global RNG (the trainer seeds and resumes it)."""
    b = len(mel)
    shifts = torch.randint(lo, hi + 1, (b,))
    shifted = torch.stack([m.roll(int(k), dims=-1) for m, k in zip(mel, shifts, strict=True)])
    use_shift = (torch.rand(b) < 0.5).view(b, 1, 1)
    return torch.where(use_shift.to(mel.device), shifted, mel.roll(1, 0))


def train_evaluators(
    clips: MemoryClips | StreamedClips,
    norm: tuple[float, float] | None,
    config: EvaluatorConfig,
    settings: Any,
    checkpoints: str | Path,
    tracker: Any = None,
    stage_config: Mapping[str, Any] | None = None,
) -> tuple[dict[str, nn.Module], dict[str, float]] | None:
    """Train the three evaluators on `clips` ({"frames", "mel", "label"}: `open_train_clips`) with the shared
    Trainer (`settings.trainer`), checkpointing in the folder `checkpoints` -> ({name: network}, final losses) on
    rank 0, None on other ranks.

    The initial weights come from `settings.trainer.seed`; every network's front end normalises by `norm`, the train
    clips' log-mel (mean, std).
    """
    trainer_cfg = settings.trainer
    if len(clips) < trainer_cfg.batch_size or norm is None:  # the config keeps batch_size >= 2
        raise ConfigError(
            f"{len(clips)} usable training clips, fewer than evaluators.trainer.batch_size={trainer_cfg.batch_size}"
        )
    torch.manual_seed(trainer_cfg.seed)  # the same initial weights every run
    nets = {
        "audio_classifier": AudioClassifier(config),
        "av_embedder": AVEmbedder(config),
        "sync_classifier": SyncClassifier(config),
    }
    for net in nets.values():
        net.front.mean.fill_(norm[0])
        net.front.std.fill_(norm[1])
    lo, hi = _shift_range(clips.shape("mel")[1], config.sample_rate / config.hop, settings.min_shift)

    def stream(spec):
        what = "evaluators.trainer.batch_size"
        return ClipBatches(clips, spec.batch_size, spec.rank, spec.world_size, spec.seed, what)

    def loss(module, batch):
        total, parts = module(
            batch["frames"], batch["mel"], batch["label"], sync_negatives(batch["mel"], lo, hi)
        )
        return total, {f"loss_{name}": float(value) for name, value in parts.items()}

    trainer = Trainer(
        EvaluatorObjective(nets), loss, stream, trainer_cfg, checkpoints, tracker, stage_config=stage_config
    )
    result = trainer.fit()
    if not trainer.dist.is_main:
        return None
    return dict(result.ema.nets.items()), result.losses


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
    report_decoded(split, len(data), data.rejected)
    return data


def train_all(
    settings: Any, clip: Any, prepared: Path, out: Path, checkpoints: Path, code: str, tracker: Any = None
) -> dict[str, Evaluator] | None:
    """Train the three evaluators on the train split (checkpoints under `checkpoints`, `code` the stage's code
    identity), calibrate them on the test split, save them to `out`; None on ranks other than 0."""
    rows = load_manifest(prepared / "manifest.csv", "train").to_dict("records")
    labels = sorted({str(row["label"]) for row in rows})
    cfg = evaluator_config(settings, clip.sample_rate, len(labels))
    t = settings.trainer
    data, kept, norm = open_train_clips(rows, labels, cfg, clip.duration, t.num_workers, t.in_memory_mb)
    report_decoded("train", len(data), kept.rejected, data.how)
    sections = {
        "evaluators": settings.model_dump(mode="json"),
        "clip": clip.model_dump(mode="json"),
        "code": code,  # changed code never resumes a checkpoint of the old one
    }
    folder = run_dir(checkpoints, "evaluators", sections)
    trained = train_evaluators(data, norm, cfg, settings, folder, tracker, sections)
    if trained is None:
        return None
    models, losses = trained
    test = decoded_split(prepared, "test", cfg, clip.duration)
    seed = settings.trainer.seed
    figures = calibrate(models, test, labels, settings.min_shift, seed)
    trained_on = {"split": "train", "clips": len(data), "steps": settings.trainer.steps, "seed": seed}
    loaded = {}
    for name, model in models.items():
        extra = {
            "training": {**trained_on, "final_loss": losses[f"loss_{name}"]},
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
        {n: e.model for n, e in loaded.items()}, test, labels, settings.min_shift, settings.trainer.seed
    )
    for name, evaluator in loaded.items():  # this pipeline's calibration, beside the one the card came with
        evaluator.card["calibration_here"] = {"split": "test", **figures.get(name, {})}
        atomic.write_json(out / f"{name}.json", evaluator.card)
    return loaded
