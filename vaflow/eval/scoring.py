"""Scoring rows of audio with the proxy evaluators and the oracle (DESIGN §6, paper §4.1 "Metrics").

A *row* is one way of producing audio for every test clip (the generator's samples, the ground truth, the ground
truth through the WaveVAE, ...); it becomes one line of the paper-style table. Every row is scored against the
same `Reference`: the real test clips as the evaluators see them (audio at the evaluators' rate, frames at their
fps and side), their audio embeddings and class logits, their video embeddings, and the synthetic world's ground
truth when there is one.

Clips whose audio is unusable (non-finite samples, which only a diverged model makes, or silence below
`silent_db` dBFS RMS) are counted and left out of every metric of that row, never averaged in as zeros.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vaflow.data.clips import ClipSet
from vaflow.eval import metrics, oracle
from vaflow.eval.evaluators import Evaluator, audio_embed_and_logits, av_embeddings, sync_probability

__all__ = ["Reference", "RowScore", "finite_or_none", "fit_length", "make_reference", "rms_db", "score_row"]


def rms_db(audio: np.ndarray) -> np.ndarray:
    """RMS level (N,) in dBFS of audio (N, samples); digital silence gives −inf, non-finite rows NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return 20 * np.log10(np.sqrt(np.mean(np.square(audio.astype(np.float64)), axis=1)))


def fit_length(audio: np.ndarray, n_samples: int) -> np.ndarray:
    """Audio (N, M) cut or zero-padded at the end to (N, n_samples): a WaveVAE decodes T_a·hop samples, which may
    differ from the clip's round(duration · rate) by less than one hop."""
    if audio.shape[1] >= n_samples:
        return audio[:, :n_samples]
    return np.pad(audio, ((0, 0), (0, n_samples - audio.shape[1])))


@dataclass
class Reference:
    """The real test clips as every row is scored against them."""

    clips: ClipSet  # decoded at the evaluators' rate, fps and side
    labels: list[str]  # the audio classifier's classes
    emb: np.ndarray  # (N, E) FD embeddings of the real audio
    logits: np.ndarray  # (N, C) class logits of the real audio
    video_emb: np.ndarray  # (N, D) IB-VA video embeddings
    truth: dict[str, oracle.Truth] | None  # synthetic world only
    sample_rate: int

    def index(self, clip_id: str) -> int:
        return self.clips.ids.index(clip_id)


def make_reference(
    evaluators: Mapping[str, Evaluator], clips: ClipSet, truth_folder: Any | None
) -> Reference:
    """Embed the real clips once; read their ground truth from `truth_folder` (None: not the synthetic world)."""
    if len(clips) < 2:
        raise ValueError(f"{len(clips)} usable test clips: the metrics need at least 2")
    classifier = evaluators["audio_classifier"]
    rate = int(classifier.card["sample_rate"])
    emb, logits = audio_embed_and_logits(classifier, clips.audio.numpy(), rate)
    video_emb, _ = av_embeddings(evaluators["av_embedder"], clips.frames.numpy(), clips.audio.numpy(), rate)
    truth = None if truth_folder is None else {i: oracle.read_truth(truth_folder, i) for i in clips.ids}
    return Reference(clips, list(classifier.card["labels"]), emb, logits, video_emb, truth, rate)


@dataclass
class RowScore:
    """A row's metrics (None where undefined, with the reason in `notes`) and its per-clip figures."""

    name: str
    metrics: dict[str, float | None]
    clips: dict[str, dict[str, Any]]  # clip id -> per-clip figures
    excluded: dict[str, list[str]] = field(default_factory=dict)  # reason -> clip ids left out
    notes: list[str] = field(default_factory=list)
    emb: dict[str, np.ndarray] = field(default_factory=dict)  # scored clip id -> its FD embedding


def score_row(
    name: str,
    ids: Sequence[str],
    audio: np.ndarray,
    sample_rate: int,
    reference: Reference,
    evaluators: Mapping[str, Evaluator],
    onset_tolerance: float = 0.05,
    is_splits: int = 10,
    silent_db: float = -60.0,
    is_reference: bool = False,
) -> RowScore:
    """Score audio (N, samples) at `sample_rate`, one row per clip id, against `reference`.

    FD (vs all real clips), KL (paired by id), IS, IB-VA and Acc. through the proxy evaluators; with ground truth,
    the oracle class accuracy (the proxy classifier's top class vs the true class) and the pooled event-onset F1.
    `is_reference`: the row *is* the real audio, so FD and KL against itself are 0 by construction and are left
    out (None) rather than printed as achievements. Raises ValueError for an id the reference does not have.
    """
    if sample_rate != reference.sample_rate:
        raise ValueError(
            f"row {name!r}: audio at {sample_rate} Hz, the evaluators run at {reference.sample_rate}"
        )
    if len(ids) != len(audio):
        raise ValueError(f"row {name!r}: {len(ids)} ids for {len(audio)} audio rows")
    unknown = [i for i in ids if i not in reference.clips.ids]
    if unknown:
        raise ValueError(
            f"row {name!r}: {len(unknown)} clip(s) not among the decoded test clips: {unknown[:5]}"
        )
    audio = fit_length(np.asarray(audio, dtype=np.float32), reference.clips.audio.shape[1])
    level = rms_db(audio)
    finite = np.isfinite(audio).all(axis=1)
    silent = finite & ~(level >= silent_db)
    score = RowScore(name, {}, {})
    score.excluded = {
        "nonfinite": [i for i, ok in zip(ids, finite, strict=True) if not ok],
        "silent": [i for i, s in zip(ids, silent, strict=True) if s],
    }
    for clip_id, db in zip(ids, level, strict=True):
        score.clips[clip_id] = {"rms_db": float(db) if np.isfinite(db) else None}
    keep = np.flatnonzero(finite & ~silent)
    used = [ids[k] for k in keep]
    m = score.metrics
    m.update(
        {
            "clips": len(ids),
            "scored": len(used),
            "nonfinite": int((~finite).sum()),
            "silent": int(silent.sum()),
        }
    )
    if len(used) < 2:
        score.notes.append(f"{len(used)} usable clip(s) of {len(ids)}: no metric is defined")
        return score
    x = audio[keep]
    at = [reference.index(i) for i in used]

    emb, logits = audio_embed_and_logits(evaluators["audio_classifier"], x, sample_rate)
    score.emb = dict(zip(used, emb, strict=True))  # so a comparison of rows can recompute FD on shared clips
    if is_reference:
        m["fd"] = m["kl"] = None
        score.notes.append("FD and KL of the real audio against itself are 0 by construction: not shown")
    else:
        with warnings.catch_warnings():  # an unreliable FD is flagged in the outputs instead
            warnings.simplefilter("ignore", UserWarning)
            fd = metrics.frechet_distance(emb, reference.emb)
        m["fd"] = fd.value
        m["fd_reliable"] = float(fd.reliable)
        if not fd.reliable:
            score.notes.append(fd.describe())
        m["kl"] = metrics.kl_divergence(reference.logits, logits, reference.clips.ids, used)
    splits = min(is_splits, len(used))
    m["is"], m["is_std"] = metrics.inception_score(logits, splits=splits)
    if splits != is_splits:
        score.notes.append(f"IS over {splits} splits: {len(used)} clips are fewer than {is_splits}")

    frames = reference.clips.frames.numpy()[at]
    video, audio_emb = av_embeddings(evaluators["av_embedder"], frames, x, sample_rate)
    m["ib_va"] = metrics.ib_score(video, audio_emb)
    p_sync = sync_probability(evaluators["sync_classifier"], frames, x, sample_rate)
    m["acc"] = 100 * metrics.sync_accuracy(p_sync)
    cosine = (video * audio_emb).sum(1) / (np.linalg.norm(video, axis=1) * np.linalg.norm(audio_emb, axis=1))
    predicted = [reference.labels[k] for k in logits.argmax(1)]
    for k, clip_id in enumerate(used):
        score.clips[clip_id].update(
            {"predicted": predicted[k], "ib_va": 100 * float(cosine[k]), "p_sync": float(p_sync[k])}
        )

    if reference.truth is not None:
        truth = [reference.truth[i] for i in used]
        m["class_acc"] = 100 * oracle.class_accuracy(predicted, [t.label for t in truth])
        onsets = [
            oracle.clip_onset_score(a, sample_rate, t, onset_tolerance) for a, t in zip(x, truth, strict=True)
        ]
        pooled = oracle.pooled_onset_f1(onsets)
        m["onset_f1"] = None if pooled is None else 100 * pooled.f1
        m["onset_clips"] = sum(s is not None for s in onsets)
        for clip_id, t, s in zip(used, truth, onsets, strict=True):
            score.clips[clip_id].update({"label": t.label, "onset_f1": None if s is None else 100 * s.f1})
    return score


def finite_or_none(value: float | None) -> float | None:
    """A metric value for JSON: NaN and inf become None (shown as "—"), never a silent number."""
    return None if value is None or not math.isfinite(value) else float(value)
