"""The figures a WaveVAE is judged by: how well decode(encode(x)) reconstructs held-out clips.

Read top to bottom: the trivial baselines' mean spectrum, the reconstruction pass, the figures every VAE gets
(spectral distances, SI-SDR, loudness, per class, decoded silence), the synthetic world's oracle figures from its
ground truth (pitch contours, event onsets), and the mel comparison figure.

All figures are means over clips. Every clip is reconstructed by decode(posterior mean), what `encode_audio`
caches as the flow's target; `test_sample_*` also decode one seeded draw z ~ posterior.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from vaflow.eval.losses import MelL1Loss, MultiResolutionSTFTLoss, si_sdr, stft_sizes
from vaflow.eval.oracle import Truth, clip_onset_score, pooled_onset_f1
from vaflow.eval.pitch import cents_error, pitch_correlation, yin
from vaflow.models.wavevae import WaveVAE

# Per-class mel L1 is reported for at most this many labels (the synthetic world has 8; VGGSound's 309 would
# swamp the metrics file).
MAX_CLASS_FIGURES = 32
# Onset tolerance of the oracle onset F1 (s): the usual 50 ms of onset evaluation (mir_eval's default).
ONSET_TOLERANCE = 0.05
# The pitch search band is the true curve's range widened by this factor on both sides (a fifth), capped at a
# quarter of the sample rate: room for a reconstruction that strays, while YIN is kept off the far sub- and
# super-harmonics that a search over the whole audible range would sometimes lock onto.
PITCH_BAND = 1.5
# Floor of the loudness ratio (dB re the input's energy): a silent reconstruction reads −120 dB, not −inf.
LOUDNESS_FLOOR_DB = -120.0


@torch.no_grad()
def mean_log_mel(audio: Tensor, sample_rate: int, batch_size: int = 32) -> Tensor:
    """The mean log-mel spectrum of clips (N, n_samples): (n_mels,), averaged over clips and frames."""
    mel = MelL1Loss(sample_rate)
    total, frames = None, 0
    for i in range(0, len(audio), batch_size):
        lm = mel.log_mel(audio[i : i + batch_size].float())  # (B, n_mels, F)
        s = lm.sum(dim=(0, 2))  # (n_mels,)
        total = s if total is None else total + s
        frames += lm.shape[0] * lm.shape[2]
    if total is None:
        raise ValueError("mean_log_mel of no clips")
    return total / frames


# --------------------------------------------------------------------------------------------
# The reconstruction pass
# --------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One batch of the reconstruction pass: clips [start, start + B) of the input."""

    start: int
    audio: Tensor  # (B, N) the input
    mean: Tensor  # (B, N) decode(posterior mean)
    sample: Tensor  # (B, N) decode(z ~ posterior), a seeded draw


@torch.no_grad()
def reconstructions(
    vae: WaveVAE, audio: Tensor, batch_size: int = 8, progress: bool = False
) -> Iterator[Batch]:
    """Reconstruct clips (N, n_samples) batch by batch on the VAE's device; a seeded draw for the samples."""
    if audio.dim() != 2 or len(audio) == 0:
        raise ValueError(f"expected clips (N, n_samples) with N >= 1, got {tuple(audio.shape)}")
    device = next(vae.parameters()).device
    generator = torch.Generator(device).manual_seed(0)
    starts = range(0, len(audio), batch_size)
    for i in tqdm(starts, desc="reconstruct", unit="batch", disable=not progress):
        x = audio[i : i + batch_size].to(device).float()  # (B, N)
        posterior = vae.encode_mono(x)  # mean, std (B, D, T)
        y = vae.decode_mono(posterior.mean).float()  # (B, N)
        y_sample = vae.decode_mono(posterior.sample(generator)).float()  # (B, N)
        yield Batch(start=i, audio=x, mean=y, sample=y_sample)


# --------------------------------------------------------------------------------------------
# Figures of every VAE
# --------------------------------------------------------------------------------------------


def loudness_db(estimate: Tensor, target: Tensor) -> Tensor:
    """10 log10(energy of estimate / energy of target) per item, floored at LOUDNESS_FLOOR_DB: (B, N) -> (B,)."""
    ratio = estimate.double().pow(2).sum(-1) / target.double().pow(2).sum(-1).clamp_min(1e-30)
    return (10 * torch.log10(ratio.clamp_min(1e-30))).clamp_min(LOUDNESS_FLOOR_DB).float()


@dataclass
class ReconstructionFigures:
    """Accumulates the figures of every VAE over the batches of a reconstruction pass (`add`, then `result`):

    - test_mel_l1, test_stft, test_si_sdr: decode(mean) vs the clip (log-mel L1, MR-STFT distance, dB);
    - test_sample_mel_l1, test_sample_stft: decode(z ~ posterior), what decoding a latent the flow generates
      resembles: a VAE may carry noise-like textures in σ rather than in the mean;
    - test_loudness_db, test_loudness_abs_db: the mean (signed: a systematically quiet VAE is negative) and the
      mean absolute energy ratio of decode(mean) to the clip, in dB;
    - test_mel_l1_<label>, test_loudness_db_<label>: test_mel_l1 and test_loudness_db per class (when there are
      at most MAX_CLASS_FIGURES labels);
    - baseline_silence_stft, baseline_silence_mel_l1: an all-zero output;
    - baseline_mean_spectrum_mel_l1: the constant log-mel spectrum `train_log_mel` (n_mels,) (the training set's
      mean, `mean_log_mel`) at every frame — what a model that ignores its input at best achieves per bin.
    A useful VAE is far below every baseline. Mel settings are MelL1Loss's.
    """

    sample_rate: int
    n_samples: int
    train_log_mel: Tensor  # (n_mels,)
    labels: Sequence[str] | None = None  # one per clip, in the order of the pass
    sums: dict[str, float] = field(default_factory=dict)
    per_class: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # label -> (mel L1, dB)
    count: int = 0

    def __post_init__(self) -> None:
        self.stft = MultiResolutionSTFTLoss(stft_sizes(self.n_samples))
        self.mel = MelL1Loss(self.sample_rate)

    def _add(self, key: str, values: Tensor) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(values.double().sum())

    @torch.no_grad()
    def add(self, batch: Batch) -> None:
        x, y, y_sample = batch.audio, batch.mean, batch.sample  # (B, N) each
        self.stft.to(x.device), self.mel.to(x.device)
        silence = torch.zeros_like(x)
        log_mel_x = self.mel.log_mel(x)  # (B, n_mels, F)
        mel_l1 = (self.mel.log_mel(y) - log_mel_x).abs().mean(dim=(1, 2))  # (B,)
        loud = loudness_db(y, x)  # (B,)
        ref = self.train_log_mel.to(x.device)[None, :, None]  # (1, n_mels, 1)
        per_item = {
            "test_mel_l1": mel_l1,
            "test_si_sdr": si_sdr(y, x),
            "test_sample_mel_l1": (self.mel.log_mel(y_sample) - log_mel_x).abs().mean(dim=(1, 2)),
            "test_loudness_db": loud,
            "test_loudness_abs_db": loud.abs(),
            "baseline_mean_spectrum_mel_l1": (log_mel_x - ref).abs().mean(dim=(1, 2)),
            "baseline_silence_mel_l1": (self.mel.log_mel(silence) - log_mel_x).abs().mean(dim=(1, 2)),
        }
        for key, values in per_item.items():
            self._add(key, values)
        pairs = (("test_stft", y), ("test_sample_stft", y_sample), ("baseline_silence_stft", silence))
        for i in range(len(x)):  # per clip: the loss's spectral convergence pools a batch's bins
            for key, estimate in pairs:
                self._add(key, self.stft(estimate[i : i + 1], x[i : i + 1]))
        if self.labels is not None:
            for i, pair in enumerate(zip(mel_l1.tolist(), loud.tolist(), strict=True)):
                self.per_class.setdefault(self.labels[batch.start + i], []).append(pair)
        self.count += len(x)

    def result(self) -> dict[str, float]:
        if not self.count:
            raise ValueError("no clips were reconstructed")
        figures = {k: v / self.count for k, v in self.sums.items()} | {"test_clips": float(self.count)}
        if len(self.per_class) <= MAX_CLASS_FIGURES:
            for label, pairs in sorted(self.per_class.items()):
                mel, loud = np.mean(pairs, axis=0)
                figures |= {f"test_mel_l1_{label}": float(mel), f"test_loudness_db_{label}": float(loud)}
        return figures


@torch.no_grad()
def decoded_silence_dbfs(vae: WaveVAE, n_samples: int) -> float:
    """RMS of decode(encode(silence)) in dB re full scale (a full-scale sine reads −3 dB): a VAE that decodes
    silence to a hum or noise reads far above the input's −∞ (floored at LOUDNESS_FLOOR_DB)."""
    device = next(vae.parameters()).device
    silence = torch.zeros(1, n_samples, device=device)
    y = vae.decode_mono(vae.encode_mono(silence).mean).double()  # (1, N)
    rms = float(y.pow(2).mean().sqrt())
    return max(20 * math.log10(rms) if rms > 0 else LOUDNESS_FLOOR_DB, LOUDNESS_FLOOR_DB)


def reconstruction_metrics(
    vae: WaveVAE,
    audio: Tensor,
    train_log_mel: Tensor,
    batch_size: int = 8,
    progress: bool = False,
    labels: Sequence[str] | None = None,
) -> dict[str, float]:
    """ReconstructionFigures of clips (N, n_samples) reconstructed by `vae` on its own device."""
    figures = ReconstructionFigures(vae.config.sample_rate, audio.shape[1], train_log_mel, labels)
    for batch in reconstructions(vae, audio, batch_size, progress):
        figures.add(batch)
    return figures.result()


# --------------------------------------------------------------------------------------------
# Oracle figures of the synthetic world
# --------------------------------------------------------------------------------------------


def pitched_curve(truth: Truth) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(class, times (T,), pitch Hz (T,)) of a clip whose only sound is one pitched class, else None.

    A monophonic tracker cannot follow one voice in a mixture: on the default world's test clips that mix a
    pitched class with another sound, YIN on the ground-truth audio itself correlates 0.2-0.9 with the truth,
    against 0.999-1.0 on the clips that hold the pitched class alone; only those are scored.
    """
    if len(truth.classes) != 1:
        return None
    curve = truth.curves.get(truth.classes[0])
    if curve is None or curve.param != "pitch_hz" or np.ptp(curve.values) <= 0:
        return None
    return truth.classes[0], curve.times(), curve.values


@dataclass
class OracleFigures:
    """Accumulates the synthetic world's oracle figures of a reconstruction pass (`add`, then `result`):

    - oracle_pitch_corr, oracle_pitch_cents: for the clips whose only sound is a pitched class (balloon, car;
      `pitched_curve`), the YIN track of decode(mean) at the true curve's instants against the true pitch:
      Pearson correlation of log f0 and median absolute error in cents, means over clips;
    - oracle_onset_f1, oracle_onset_precision, oracle_onset_recall: detected onsets of decode(mean) against the
      true event onsets (event classes, ±ONSET_TOLERANCE s), pooled over the clips with an event class;
    - the same with `_input` on the clips themselves: the ceiling the detectors reach on the real audio;
    - oracle_pitch_clips, oracle_onset_clips: how many clips each figure is over.
    `truths` has one Truth (or None: not scored) per clip, in the order of the pass.
    """

    sample_rate: int
    truths: Sequence[Truth | None]
    pitch: dict[str, list[float]] = field(default_factory=dict)
    onsets: dict[str, list] = field(default_factory=dict)

    def _pitch(self, audio: np.ndarray, times: np.ndarray, f0: np.ndarray) -> tuple[float, float]:
        band = (float(f0.min()) / PITCH_BAND, min(float(f0.max()) * PITCH_BAND, self.sample_rate / 4))
        track = yin(audio, self.sample_rate, times, *band)
        return pitch_correlation(track.f0, f0), cents_error(track.f0, f0)

    def add(self, batch: Batch) -> None:
        x, y = batch.audio.double().cpu().numpy(), batch.mean.double().cpu().numpy()  # (B, N)
        for i in range(len(x)):
            truth = self.truths[batch.start + i]
            if truth is None:
                continue
            for suffix, audio in (("", y[i]), ("_input", x[i])):
                self.onsets.setdefault(suffix, []).append(
                    clip_onset_score(audio, self.sample_rate, truth, ONSET_TOLERANCE)
                )
                pitched = pitched_curve(truth)
                if pitched is not None:
                    corr, cents = self._pitch(audio, pitched[1], pitched[2])
                    self.pitch.setdefault(f"corr{suffix}", []).append(corr)
                    self.pitch.setdefault(f"cents{suffix}", []).append(cents)

    def result(self) -> dict[str, float]:
        figures: dict[str, float] = {}
        for suffix in ("", "_input"):
            if self.pitch.get(f"corr{suffix}"):
                figures[f"oracle_pitch_corr{suffix}"] = float(np.mean(self.pitch[f"corr{suffix}"]))
                figures[f"oracle_pitch_cents{suffix}"] = float(np.mean(self.pitch[f"cents{suffix}"]))
            pooled = pooled_onset_f1(self.onsets.get(suffix, []))
            if pooled is not None:
                figures[f"oracle_onset_f1{suffix}"] = pooled.f1
                if not suffix:
                    figures["oracle_onset_precision"] = pooled.precision
                    figures["oracle_onset_recall"] = pooled.recall
        figures["oracle_pitch_clips"] = float(len(self.pitch.get("corr", [])))
        figures["oracle_onset_clips"] = float(sum(s is not None for s in self.onsets.get("", [])))
        return figures


# --------------------------------------------------------------------------------------------
# The mel comparison figure
# --------------------------------------------------------------------------------------------


def pick_examples(labels: Sequence[str], truths: Sequence[Truth | None] | None, count: int) -> list[int]:
    """Indices of up to `count` clips of distinct labels, in order of first appearance; a clip whose ground truth
    holds its label alone is preferred (its spectrogram shows that class only)."""
    chosen: dict[str, int] = {}
    for i, label in enumerate(labels):
        alone = truths is None or truths[i] is None or len(truths[i].classes) == 1
        if label not in chosen and alone:
            chosen[label] = i
    for i, label in enumerate(labels):  # labels without a single-class clip: their first clip
        chosen.setdefault(label, i)
    return sorted(chosen.values(), key=lambda i: i)[:count]


def plot_mels(
    path: str | Path,
    clips: Sequence[tuple[str, Tensor, Tensor]],
    sample_rate: int,
    title: str = "",
) -> Path:
    """A PNG of log-mel spectrograms, one row per clip: ground truth left, reconstruction right, same colour scale.

    clips: (caption, audio (N,), reconstruction (N,)); mel settings are MelL1Loss's.
    """
    if not clips:
        raise ValueError("plot_mels: no clips to draw")
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a CI machine or a DVC stage
    import matplotlib.pyplot as plt
    from PIL import Image

    mel = MelL1Loss(sample_rate)
    hop_s = mel.mel.hop_length / sample_rate
    fig, axes = plt.subplots(len(clips), 2, figsize=(9, 1.9 * len(clips)), squeeze=False, sharex=True)
    for row, (caption, x, y) in enumerate(clips):
        pair = mel.log_mel(torch.stack([x.float().cpu(), y.float().cpu()])).numpy()  # (2, n_mels, F)
        lo, hi = float(pair[0].min()), float(pair[0].max())
        extent = (0.0, pair.shape[2] * hop_s, 0, pair.shape[1])
        for col, name in enumerate(("ground truth", "reconstruction")):
            ax = axes[row, col]
            ax.imshow(pair[col], origin="lower", aspect="auto", extent=extent, vmin=lo, vmax=hi, cmap="magma")
            ax.set_title(f"{caption}: {name}", fontsize=8)
            ax.set_ylabel("mel bin", fontsize=7)
            ax.tick_params(labelsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("time (s)", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    plt.close(fig)
    # 128 palette colours: indistinguishable on a colour map, and a third of the RGB file (~0.25 MB for 8 clips),
    # which matters for a figure committed beside the metrics.
    image = Image.open(buffer).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=128)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    image.save(tmp, optimize=True)
    tmp.replace(path)  # atomic: a DVC plot is never half written
    return path


# --------------------------------------------------------------------------------------------
# Everything in one pass
# --------------------------------------------------------------------------------------------


def evaluate_reconstruction(
    vae: WaveVAE,
    audio: Tensor,
    train_log_mel: Tensor,
    labels: Sequence[str],
    truths: Sequence[Truth | None] | None = None,
    figure: str | Path | None = None,
    figure_clips: int = 4,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, float]:
    """Every figure of clips (N, n_samples) in one reconstruction pass on the VAE's device.

    ReconstructionFigures with per-class mel L1 over `labels` (N,), OracleFigures when `truths` (N,) are given
    (the synthetic world), test_silence_dbfs (`decoded_silence_dbfs`), and, when `figure` is a path, the mel
    comparison of `figure_clips` clips of distinct labels written there as a PNG (`plot_mels`).
    """
    if len(labels) != len(audio) or (truths is not None and len(truths) != len(audio)):
        raise ValueError(f"{len(audio)} clips need as many labels ({len(labels)}) and truths")
    sample_rate = vae.config.sample_rate
    figures = ReconstructionFigures(sample_rate, audio.shape[1], train_log_mel, labels)
    oracle = OracleFigures(sample_rate, truths) if truths is not None else None
    examples = set(pick_examples(labels, truths, figure_clips)) if figure is not None else set()
    shown: list[tuple[str, Tensor, Tensor]] = []
    for batch in reconstructions(vae, audio, batch_size, progress):
        figures.add(batch)
        if oracle is not None:
            oracle.add(batch)
        for i in range(len(batch.audio)):
            if batch.start + i in examples:
                shown.append((labels[batch.start + i], batch.audio[i].cpu(), batch.mean[i].cpu()))
    result = figures.result() | (oracle.result() if oracle is not None else {})
    result["test_silence_dbfs"] = decoded_silence_dbfs(vae, audio.shape[1])
    if figure is not None:
        title = f"log-mel, ground truth vs decode(mean): test mel L1 {result['test_mel_l1']:.3f}"
        plot_mels(figure, shown, sample_rate, title)
    return result


__all__ = [
    "ONSET_TOLERANCE",
    "Batch",
    "OracleFigures",
    "ReconstructionFigures",
    "decoded_silence_dbfs",
    "evaluate_reconstruction",
    "loudness_db",
    "mean_log_mel",
    "pick_examples",
    "pitched_curve",
    "plot_mels",
    "reconstruction_metrics",
    "reconstructions",
]
