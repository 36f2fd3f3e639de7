"""Pure evaluation metrics (paper §4.1 "Metrics", DESIGN §6): numpy arrays in, numbers out.

Each function follows the toolkit the paper's numbers come from, so a value here is comparable to a published
one when the same evaluator network produced the inputs:

- `frechet_distance`: FD of two feature sets (pytorch-fid / audioldm_eval formula), with a reliability flag;
- `kl_divergence`: KL(p_gt ‖ p_gen) of classifier logits paired by clip id (audioldm_eval, AudioGen);
- `inception_score`: IS with the torch-fidelity / audioldm_eval shuffle (seed 2020) and 10 splits;
- `ib_score`: IB-VA, mean cosine between video and generated-audio ImageBind embeddings, ×100;
- `sync_accuracy`: Acc., the fraction of clips a sync classifier judges aligned (Diff-Foley's p > 0.5);
- `onset_f1` and `detect_onsets`: the synthetic world's oracle event-onset F1 (DESIGN §6).

Everything is computed in float64. Nothing here knows about models, files or evaluators: the evaluator that
made the features, and its identity, are the caller's to record.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _matrix(x: np.ndarray, name: str) -> np.ndarray:
    """x as a finite float64 (N, D) array, or a ValueError naming `name`."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return a


def _vector(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """x as a finite float64 (N,) array, or a ValueError naming `name`."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return a


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax (N, C) -> (N, C), shifted by the row max so exp never overflows."""
    if logits.shape[1] < 1:
        raise ValueError("logits need at least one class column")
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


# --------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FDResult:
    """A Fréchet distance with the sample counts and dimension it was computed at."""

    value: float
    n_a: int
    n_b: int
    dim: int
    # False when min(n_a, n_b) <= dim: a covariance from N <= D samples is rank-deficient, and FD is then
    # dominated by its N-dependent bias; such values are comparable only with FDs computed at the same N.
    reliable: bool

    def describe(self) -> str:
        """The value with its sample counts, or with a warning when it is unreliable."""
        if not self.reliable:
            n = min(self.n_a, self.n_b)
            return (
                f"FD {self.value:.4f} (unreliable: {n} samples ≤ {self.dim} feature dims;"
                " compare FDs only at equal N)"
            )
        return f"FD {self.value:.4f} (N = {self.n_a} vs {self.n_b}, D = {self.dim})"

    def __str__(self) -> str:
        return self.describe()

    def __float__(self) -> float:
        return self.value


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> FDResult:
    """Fréchet distance between Gaussians fitted to feats_a (N, D) and feats_b (M, D) -> `FDResult`.

    FD = ‖μ_a − μ_b‖² + Tr Σ_a + Tr Σ_b − 2 Tr √(Σ_a Σ_b) (Heusel et al. 2017; pytorch-fid, audioldm_eval),
    with unbiased covariances (N − 1, np.cov's default) in float64. The trace term is computed from
    eigenvalues instead of scipy.linalg.sqrtm, which is unstable for near-singular covariances:
    Σ_a Σ_b is similar to the symmetric PSD matrix √Σ_a Σ_b √Σ_a, so Tr √(Σ_a Σ_b) = Σ_i √max(λ_i, 0) over
    its eigenvalues λ_i (eigh for √Σ_a, eigvalsh for the product; round-off negatives are clipped to 0).

    When min(N, M) <= D the result is flagged unreliable and a UserWarning is issued: FD is biased by a term
    that shrinks with N, so compare FDs only at equal N (DESIGN §6).
    Raises ValueError on non-2-D or non-finite input, fewer than 2 samples, or different feature dims.
    """
    a, b = _matrix(feats_a, "feats_a"), _matrix(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dims differ: feats_a has D = {a.shape[1]}, feats_b has D = {b.shape[1]}")
    if min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(
            f"need at least 2 samples per set for a covariance, got {a.shape[0]} and {b.shape[0]}"
        )
    (n_a, dim), n_b = a.shape, b.shape[0]

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)  # (D,)
    sigma_a = np.cov(a, rowvar=False).reshape(dim, dim)  # (D, D), N − 1 normalisation
    sigma_b = np.cov(b, rowvar=False).reshape(dim, dim)

    w, v = np.linalg.eigh(sigma_a)  # Σ_a = V diag(w) Vᵀ
    sqrt_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # √Σ_a (D, D)
    m = sqrt_a @ sigma_b @ sqrt_a  # √Σ_a Σ_b √Σ_a (D, D), symmetric PSD
    lam = np.linalg.eigvalsh((m + m.T) / 2)  # symmetrise away round-off before eigvalsh
    tr_covmean = np.sqrt(np.clip(lam, 0.0, None)).sum()  # Tr √(Σ_a Σ_b)

    diff = mu_a - mu_b
    value = float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * tr_covmean)
    result = FDResult(value=value, n_a=n_a, n_b=n_b, dim=dim, reliable=min(n_a, n_b) > dim)
    if not result.reliable:
        warnings.warn(f"Fréchet distance is {result.describe()}", UserWarning, stacklevel=2)
    return result


# --------------------------------------------------------------------------------------------
# Classifier-based metrics: KL and IS
# --------------------------------------------------------------------------------------------


def kl_divergence(
    gt_logits: np.ndarray,
    gen_logits: np.ndarray,
    gt_ids: Sequence[str],
    gen_ids: Sequence[str],
    eps: float = 0.0,
) -> float:
    """Mean KL(p_gt ‖ p_gen) over generated clips paired with their ground truth by clip id -> float (nats).

    gt_logits (M, C) and gen_logits (N, C) are classifier *logits* (not probabilities; softmax is applied
    here), with one id per row in gt_ids (M,) and gen_ids (N,). Every generated row is paired with the
    ground-truth row of its id, so gen rows may come in any order and an id may have several generated
    samples (the ground truth is repeated for each, as in SpecVQGAN's KL, which audioldm_eval adapted).
    Ground-truth ids without a generated row are not used.

    KL = (1/N) Σ_n Σ_c p_gt[n, c] · (log p_gt[n, c] − log p_gen[n, c]), p = softmax(logits) (audioldm_eval's
    `kullback_leibler_divergence_softmax`, AudioGen). Logs come from a stable log-softmax. audioldm_eval
    takes log(softmax + 1e-6) for p_gen instead: pass eps=1e-6 to reproduce its numbers exactly.
    Raises ValueError on shape or id-count mismatches, duplicate ground-truth ids, or a generated id that
    has no ground truth (named in the message).
    """
    gt, gen = _matrix(gt_logits, "gt_logits"), _matrix(gen_logits, "gen_logits")
    if gt.shape[1] != gen.shape[1]:
        raise ValueError(f"class counts differ: gt_logits has C = {gt.shape[1]}, gen_logits {gen.shape[1]}")
    if len(gt_ids) != gt.shape[0] or len(gen_ids) != gen.shape[0]:
        raise ValueError(
            f"one id per row needed: {len(gt_ids)} gt_ids for {gt.shape[0]} rows,"
            f" {len(gen_ids)} gen_ids for {gen.shape[0]} rows"
        )
    if gen.shape[0] == 0:
        raise ValueError("gen_logits has no rows")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    row_of: dict[str, int] = {}
    for i, clip in enumerate(gt_ids):
        if clip in row_of:
            raise ValueError(f"duplicate ground-truth id {clip!r}")
        row_of[clip] = i
    missing = [clip for clip in dict.fromkeys(gen_ids) if clip not in row_of]
    if missing:
        shown = ", ".join(repr(c) for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} generated id(s) have no ground-truth row: {shown}")

    log_p = _log_softmax(gt)[[row_of[clip] for clip in gen_ids]]  # (N, C) ground truth, one per gen row
    log_q = _log_softmax(gen)  # (N, C)
    if eps > 0:
        log_q = np.log(np.exp(log_q) + eps)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)  # (N,)
    return float(kl.mean())


def inception_score(logits: np.ndarray, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    """Inception score of classifier logits (N, C) -> (mean, std) over `splits` splits.

    As torch-fidelity / audioldm_eval: rows are shuffled with np.random.RandomState(seed).permutation(N)
    (seed 2020), cut into splits at the boundaries ⌊i·N/splits⌋, and each split scores
    exp(mean_x KL(p(y|x) ‖ p(y))) with p(y|x) = softmax(logits) and p(y) the split's mean p(y|x).
    Returns the mean and the population std (np.std, ddof 0) of the split scores.
    Logits only: probabilities would be softmaxed a second time. A class whose probability underflows to 0
    in a whole split contributes 0 (the limit of p log p), where the reference would give NaN.
    Raises ValueError if N < splits.
    """
    x = _matrix(logits, "logits")
    n = x.shape[0]
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    if n < splits:
        raise ValueError(f"need at least one row per split: N = {n} < splits = {splits}")
    x = x[np.random.RandomState(seed).permutation(n)]
    log_p = _log_softmax(x)  # (N, C) log p(y|x)
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits  # torch-fidelity's boundaries, not np.array_split's
        # p(y) = 0 only where every p(y|x) of the split underflowed to 0 too; those terms are masked below.
        with np.errstate(divide="ignore", invalid="ignore"):
            log_marginal = np.log(p[lo:hi].mean(axis=0))  # (C,) log p(y) of the split
            terms = p[lo:hi] * (log_p[lo:hi] - log_marginal)  # (n_split, C)
        kl = np.where(p[lo:hi] > 0, terms, 0.0).sum(axis=1)  # (n_split,); 0·log 0 = 0, not NaN
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


# --------------------------------------------------------------------------------------------
# Audio-visual relevance and synchronisation
# --------------------------------------------------------------------------------------------


def ib_score(video_emb: np.ndarray, audio_emb: np.ndarray) -> float:
    """IB-VA: mean cosine similarity between row i of video_emb (N, D) and row i of audio_emb (N, D), ×100.

    The paper's relevance metric (§4.1): ImageBind embeddings of the input video and the generated audio,
    each L2-normalised, dot product per pair, averaged and scaled by 100 (range [−100, 100]).
    Raises ValueError on shape mismatch, no rows, non-finite values or an all-zero embedding.
    """
    v, a = _matrix(video_emb, "video_emb"), _matrix(audio_emb, "audio_emb")
    if v.shape != a.shape:
        raise ValueError(f"embedding shapes differ: video_emb {v.shape}, audio_emb {a.shape}")
    if v.shape[0] == 0:
        raise ValueError("no embeddings given")
    nv, na = np.linalg.norm(v, axis=1), np.linalg.norm(a, axis=1)  # (N,)
    if (nv == 0).any() or (na == 0).any():
        raise ValueError("an embedding is all zeros: its cosine similarity is undefined")
    cos = (v * a).sum(axis=1) / (nv * na)  # (N,)
    return float(100.0 * cos.mean())


def sync_accuracy(probabilities: Sequence[float] | np.ndarray, threshold: float = 0.5) -> float:
    """Acc.: fraction of clips whose sync-classifier probability (N,) of "aligned" is above threshold.

    Diff-Foley's evaluator (evaluation/align_acc.py) rounds the classifier output and counts 1s; torch.round
    sends 0.5 to 0, so a clip counts as aligned when p > 0.5 strictly. The same strict `>` is used for any
    threshold. Raises ValueError if there are no values or any lies outside [0, 1].
    """
    p = _vector(probabilities, "probabilities")
    if p.size == 0:
        raise ValueError("no probabilities given")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"probabilities must lie in [0, 1], got values in [{p.min()}, {p.max()}]")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    return float((p > threshold).mean())


# --------------------------------------------------------------------------------------------
# Oracle event-onset metrics (synthetic world only)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnsetScore:
    """Precision, recall and F1 of detected onsets against true ones, with the match counts."""

    precision: float
    recall: float
    f1: float
    tp: int  # matched detections (= matched true onsets)
    fp: int  # detections left unmatched
    fn: int  # true onsets left unmatched


def onset_f1(detected: Sequence[float], truth: Sequence[float], tolerance: float) -> OnsetScore:
    """Event-onset F1 of detected (K,) against truth (L,) onset times in seconds, within ±tolerance s.

    Matching is one-to-one: each true onset takes at most one detection and each detection counts once, and a
    pair matches when |d − t| <= tolerance. The number of matches is the maximum possible, the same count as
    mir_eval.onset.f_measure's bipartite matching; it is found by a sweep over both sorted lists that gives
    each true onset the earliest unused detection within its window, which is optimal because all windows
    have the same width. precision = tp / K, recall = tp / L, F1 = 2PR / (P + R).
    Conventions: no truth and no detection gives P = R = F1 = 1 (nothing to find, nothing wrongly found;
    mir_eval returns 0 there); otherwise an empty side gives 0 for the ratio it would divide, never NaN.
    """
    d, t = np.sort(_vector(detected, "detected")), np.sort(_vector(truth, "truth"))
    if not (np.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be finite and >= 0, got {tolerance}")
    if d.size == 0 and t.size == 0:
        return OnsetScore(precision=1.0, recall=1.0, f1=1.0, tp=0, fp=0, fn=0)
    tp, j = 0, 0
    for onset in t:
        while j < d.size and d[j] < onset - tolerance:  # too early for this and every later true onset
            j += 1
        if j < d.size and d[j] <= onset + tolerance:
            tp += 1
            j += 1
    precision = tp / d.size if d.size else 0.0
    recall = tp / t.size if t.size else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return OnsetScore(precision=precision, recall=recall, f1=f1, tp=tp, fp=d.size - tp, fn=t.size - tp)


# Gain on full-scale-relative magnitudes before log compression: log1p(100·|X|) is ≈ linear, hence tiny, for
# content more than 40 dB below full scale (a 1e-3 noise floor, the spectral splatter of a tone's release) and
# ≈ log above it. A larger gain (1000) made tone-burst offsets fire; tuned on the synthetic world's classes.
_LOG_GAIN = 100.0
# A peak must also clear this many robust standard deviations (1.4826·MAD) of the clip's flux: the log flux
# of loud stationary noise fluctuates by more than `threshold`, and 4σ keeps its false peaks rare.
_NOISE_SIGMAS = 4.0


def detect_onsets(
    audio: np.ndarray,
    sample_rate: int,
    hop_s: float = 0.01,
    threshold: float = 0.02,
    win_s: float = 0.04,
    median_s: float = 0.1,
    min_gap_s: float = 0.05,
) -> list[float]:
    """Onset times in seconds of audio (N,) at sample_rate Hz, by log spectral flux -> sorted list[float].

    A plain spectral-flux detector (Bello et al. 2005; log compression as Böck et al. 2012), used for the
    synthetic world's oracle event-onset F1 on generated audio (DESIGN §6):
    1. Hann-windowed frames of win_s seconds every hop_s seconds (win_s >= 2·hop_s); the clip is zero-padded
       at its end to whole frames.
    2. L_k = log1p(100 · |rfft(frame_k)| / Σ window): magnitudes relative to full scale (a full-scale sine
       reads 0.5), compressed.
    3. Flux f_k = mean over frequency bins of max(L_k − L_{k−1}, 0), half-wave rectified; f_0 = 0, since the
       clip's start is not an onset.
    4. Adaptive threshold: the median of f over median_s seconds centred on k, plus the larger of `threshold`
       (in mean log-flux per bin) and 4 robust standard deviations of f over the clip (1.4826·MAD, so that
       loud stationary noise does not fire). Frame k is a peak when f_k exceeds this threshold and is the
       maximum of f within ±min_gap_s/2.
    5. A peak closer than min_gap_s to the previous kept one is dropped (the earlier wins).
    Frame k spans samples [k·hop, k·hop + win). Its onset time is the middle of its second-newest hop,
    (k·hop + win − 1.5·hop) / sample_rate: under the Hann taper an abrupt onset gives its largest log rise
    one hop after it enters the frame. Measured on clicks, tone bursts and thuds at every offset within a hop
    (default settings, 16 kHz), the error is within ±8 ms. Onsets in the clip's first win_s seconds are not
    reported, and digital silence gives none.
    """
    x = _vector(audio, "audio")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    hop, win = round(hop_s * sample_rate), round(win_s * sample_rate)
    if hop < 1 or win < 2 * hop:
        raise ValueError(f"need hop >= 1 sample and win >= 2·hop, got hop {hop} and win {win} samples")
    if threshold < 0 or median_s <= 0 or min_gap_s <= 0:
        raise ValueError(
            f"need threshold >= 0, median_s > 0, min_gap_s > 0; got {threshold}, {median_s}, {min_gap_s}"
        )
    if x.size == 0:
        return []
    hop_sec = hop / sample_rate  # the hop actually used, after rounding to samples

    n_frames = 1 + max(0, -(-(x.size - win) // hop))  # ceil: a last partial frame is zero-padded
    padded = np.concatenate([x, np.zeros((n_frames - 1) * hop + win - x.size)])
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop]  # (K, win)
    window = np.hanning(win + 2)[1:-1]  # Hann without its zero end points
    mag = np.abs(np.fft.rfft(frames * window, axis=1)) / window.sum()  # (K, F)
    log_mag = np.log1p(_LOG_GAIN * mag)  # (K, F)
    rise = np.diff(log_mag, axis=0, prepend=log_mag[:1])  # (K, F); row 0 is zero
    flux = np.maximum(rise, 0.0).mean(axis=1)  # (K,)

    half_med = max(1, round(median_s / hop_sec / 2))
    med = np.median(
        np.lib.stride_tricks.sliding_window_view(np.pad(flux, half_med, mode="edge"), 2 * half_med + 1),
        axis=1,
    )  # (K,) local median
    half_max = max(1, round(min_gap_s / hop_sec / 2))
    local_max = np.lib.stride_tricks.sliding_window_view(
        np.pad(flux, half_max, constant_values=-np.inf), 2 * half_max + 1
    ).max(axis=1)  # (K,)
    sigma = 1.4826 * np.median(np.abs(flux - np.median(flux)))  # robust std of the flux
    peaks = np.flatnonzero((flux > med + max(threshold, _NOISE_SIGMAS * sigma)) & (flux >= local_max))

    gap = max(1, round(min_gap_s / hop_sec))
    kept: list[int] = []
    for k in peaks:
        if not kept or k - kept[-1] >= gap:
            kept.append(int(k))
    return [(k * hop + win - 1.5 * hop) / sample_rate for k in kept]
