"""The evaluation metrics against closed forms (DESIGN §6): Gaussians for FD, one-hot classifiers for IS,
hand-computed KLs, and clicks at known times for the onset detector."""

from __future__ import annotations

import math
import warnings
from dataclasses import astuple

import numpy as np
import pytest
import scipy.linalg

from vaflow.eval import (
    FDResult,
    detect_onsets,
    frechet_distance,
    ib_score,
    inception_score,
    kl_divergence,
    onset_f1,
    sync_accuracy,
)

# --------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------


def _exact_moments(rng: np.random.Generator, n: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """n samples (n, D) whose sample mean is exactly `mean` and whose np.cov is exactly diag(std²)."""
    z = rng.standard_normal((n, mean.size))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whiten: np.cov(z) = I
    return mean + z * std


def _no_warning(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args)


def test_fd_of_shifted_unit_gaussians_is_squared_mean_shift():
    rng = np.random.default_rng(0)
    mu = np.array([1.0, -1.0, 0.0, 0.0])  # ‖μ‖² = 2
    a = rng.standard_normal((20000, 4))
    b = mu + rng.standard_normal((20000, 4))
    fd = _no_warning(frechet_distance, a, b)
    # The sample-mean error δ has std √(2/N) = 0.01 per dim, so 2μ·δ has std 2‖μ‖·0.01 ≈ 0.028: ±0.1 is 3.5σ
    # (the covariance term is O(D²/N) ≈ 1e-3).
    assert fd.value == pytest.approx(2.0, abs=0.1)
    assert (fd.n_a, fd.n_b, fd.dim, fd.reliable) == (20000, 20000, 4, True)


def test_fd_of_diagonal_gaussians_matches_formula():
    rng = np.random.default_rng(1)
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 1.0])
    std_a, std_b = np.array([1.0, 2.0, 0.5]), np.array([3.0, 1.0, 0.5])
    a = _exact_moments(rng, 300, mu_a, std_a)
    b = _exact_moments(rng, 500, mu_b, std_b)
    # For diagonal covariances Tr √(Σ_a Σ_b) = Σ σ_a σ_b, so FD = Σ (μ_a − μ_b)² + Σ (σ_a − σ_b)².
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((std_a - std_b) ** 2)
    assert frechet_distance(a, b).value == pytest.approx(expected, abs=1e-9)


def test_fd_of_a_set_with_itself_is_zero_and_fd_is_symmetric():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((400, 8)) @ rng.standard_normal((8, 8))  # correlated features
    b = 0.5 + rng.standard_normal((300, 8))
    assert abs(frechet_distance(a, a).value) <= 1e-8
    assert frechet_distance(a, b).value == pytest.approx(frechet_distance(b, a).value, rel=1e-9)


def test_fd_agrees_with_the_sqrtm_formula_on_a_well_conditioned_case():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((200, 16))
    b = rng.standard_normal((200, 16)) @ np.diag(np.linspace(0.5, 2.0, 16)) + 0.3
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = a.mean(0) - b.mean(0)
    reference = diff @ diff + np.trace(sa + sb - 2 * scipy.linalg.sqrtm(sa @ sb).real)  # pytorch-fid
    assert frechet_distance(a, b).value == pytest.approx(reference, rel=1e-8)


@pytest.mark.parametrize("n", [16, 32])
def test_fd_with_no_more_samples_than_dims_warns_and_says_so(n):
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((n, 32)), rng.standard_normal((100, 32))
    with pytest.warns(UserWarning, match="unreliable") as caught:
        fd = frechet_distance(a, b)
    assert len(caught) == 1
    assert not fd.reliable
    assert f"unreliable: {n} samples ≤ 32 feature dims" in str(fd)
    assert "compare FDs only at equal N" in fd.describe()


def test_fd_result_prints_its_counts_when_reliable():
    fd = FDResult(value=12.345678, n_a=1000, n_b=900, dim=128, reliable=True)
    assert str(fd) == "FD 12.3457 (N = 1000 vs 900, D = 128)"
    assert float(fd) == 12.345678


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (np.zeros((10, 3)), np.zeros((10, 4)), "feature dims differ"),
        (np.zeros((1, 3)), np.zeros((10, 3)), "at least 2 samples"),
        (np.full((10, 3), np.nan), np.zeros((10, 3)), "feats_a contains non-finite"),
        (np.zeros((10, 3)), np.full((10, 3), np.inf), "feats_b contains non-finite"),
        (np.zeros(10), np.zeros((10, 1)), "2-D"),
    ],
)
def test_fd_rejects_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        frechet_distance(a, b)


# --------------------------------------------------------------------------------------------
# Inception score
# --------------------------------------------------------------------------------------------


def _one_hot_logits(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return 50.0 * np.eye(n_classes)[labels]  # p(y|x) is one-hot up to e^−50


def test_is_of_identical_predictions_is_one():
    logits = np.tile(np.array([2.0, -1.0, 0.5, 3.0]), (200, 1))
    mean, std = inception_score(logits)
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)
    # One class certain everywhere: the others' p(y|x) and p(y) underflow to 0, and 0·log 0 counts as 0.
    assert inception_score(np.tile([1000.0, 0.0, 0.0], (50, 1))) == pytest.approx((1.0, 0.0), abs=1e-12)


def test_is_of_balanced_confident_predictions_in_one_split_is_the_class_count():
    labels = np.arange(1000) % 10
    logits = _one_hot_logits(labels, 10)
    # One split: p(y) is exactly uniform, KL(one-hot ‖ uniform) = log C, so IS = C, whatever the row order.
    assert inception_score(logits, splits=1) == pytest.approx((10.0, 0.0), abs=1e-9)
    shuffled = logits[np.random.default_rng(0).permutation(1000)]
    assert inception_score(shuffled, splits=1) == pytest.approx((10.0, 0.0), abs=1e-9)
    # Logits so large that softmax underflows to exact zeros still give C, not NaN.
    assert inception_score(20 * logits, splits=1) == pytest.approx((10.0, 0.0), abs=1e-9)


@pytest.mark.parametrize("n", [1000, 1005])
def test_is_split_scores_are_exp_entropy_of_each_split_class_histogram(n):
    """With one-hot p(y|x) a split scores exp(H(its class histogram)): checks seed 2020 and split bounds."""
    labels = np.arange(n) % 10
    shuffled = labels[np.random.RandomState(2020).permutation(n)]
    scores = []
    for i in range(10):
        counts = np.bincount(shuffled[i * n // 10 : (i + 1) * n // 10], minlength=10)
        freq = counts[counts > 0] / counts.sum()
        scores.append(math.exp(-(freq * np.log(freq)).sum()))
    mean, std = inception_score(_one_hot_logits(labels, 10))
    assert mean == pytest.approx(np.mean(scores), abs=1e-9)
    assert std == pytest.approx(np.std(scores), abs=1e-9)


def test_is_of_many_balanced_confident_predictions_approaches_the_class_count():
    labels = np.arange(10000) % 10
    mean, std = inception_score(_one_hot_logits(labels, 10))
    # Each split of 1000 rows holds a random class histogram whose entropy falls short of log 10 by about
    # (C − 1)/(2n) = 0.0045 nats, so IS ≈ 10·e^−0.0045 ≈ 9.955, with a spread of a few 1e-3.
    assert 9.9 < mean <= 10.0
    assert std < 0.05


def test_is_rejects_fewer_rows_than_splits():
    with pytest.raises(ValueError, match="N = 5 < splits = 10"):
        inception_score(np.zeros((5, 3)))


# --------------------------------------------------------------------------------------------
# KL divergence
# --------------------------------------------------------------------------------------------


def test_kl_of_identical_logits_is_zero():
    logits = np.random.default_rng(5).standard_normal((20, 7))
    ids = [f"c{i}" for i in range(20)]
    assert kl_divergence(logits, logits, ids, ids) == pytest.approx(0.0, abs=1e-12)


def test_kl_matches_a_hand_computed_two_class_example():
    gt = np.array([[0.0, 0.0], [1.0, 2.0]])  # p = (1/2, 1/2) for "a"
    gen = np.array([[math.log(3.0), 0.0], [1.0, 2.0]])  # q = (3/4, 1/4) for "a"; "b" identical
    # KL(p ‖ q) = ½ log(½ / ¾) + ½ log(½ / ¼) = ½ log(4/3) for "a", 0 for "b"; averaged over the 2 pairs.
    assert kl_divergence(gt, gen, ["a", "b"], ["a", "b"]) == pytest.approx(0.25 * math.log(4 / 3), abs=1e-12)


def test_kl_pairs_rows_by_id_in_any_order():
    rng = np.random.default_rng(6)
    gt, gen = rng.standard_normal((10, 5)), rng.standard_normal((10, 5))
    ids = [f"clip{i}" for i in range(10)]
    order = rng.permutation(10)
    shuffled_ids = [ids[i] for i in order]
    assert kl_divergence(gt, gen[order], ids, shuffled_ids) == pytest.approx(
        kl_divergence(gt, gen, ids, ids), abs=1e-12
    )


def test_kl_averages_over_every_generated_sample_of_an_id():
    rng = np.random.default_rng(7)
    gt, gen = rng.standard_normal((2, 4)), rng.standard_normal((3, 4))
    per_row = [kl_divergence(gt[[g]], gen[[i]], ["x"], ["x"]) for i, g in enumerate([0, 0, 1])]
    assert kl_divergence(gt, gen, ["a", "b"], ["a", "a", "b"]) == pytest.approx(np.mean(per_row), abs=1e-12)


def test_kl_is_stable_for_huge_logits_and_eps_reproduces_audioldm_eval():
    gt, gen = np.array([[1000.0, 0.0]]), np.array([[0.0, 1000.0]])
    assert kl_divergence(gt, gen, ["a"], ["a"]) == pytest.approx(1000.0, rel=1e-12)
    # audioldm_eval: kl_div((softmax(gen) + 1e-6).log(), softmax(gt), reduction="sum") / N.
    rng = np.random.default_rng(8)
    gt, gen = rng.standard_normal((6, 5)), 3 * rng.standard_normal((6, 5))
    p = np.exp(gt) / np.exp(gt).sum(1, keepdims=True)
    q = np.exp(gen) / np.exp(gen).sum(1, keepdims=True)
    reference = (p * (np.log(p) - np.log(q + 1e-6))).sum() / 6
    ids = list("abcdef")
    assert kl_divergence(gt, gen, ids, ids, eps=1e-6) == pytest.approx(reference, rel=1e-10)


def test_kl_rejects_unknown_and_duplicate_ids():
    logits = np.zeros((2, 3))
    with pytest.raises(ValueError, match="'ghost'"):
        kl_divergence(logits, logits, ["a", "b"], ["a", "ghost"])
    with pytest.raises(ValueError, match="duplicate ground-truth id 'a'"):
        kl_divergence(logits, logits, ["a", "a"], ["a", "a"])
    with pytest.raises(ValueError, match="class counts differ"):
        kl_divergence(logits, np.zeros((2, 4)), ["a", "b"], ["a", "b"])


# --------------------------------------------------------------------------------------------
# IB-VA and sync accuracy
# --------------------------------------------------------------------------------------------


def test_ib_score_of_identical_orthogonal_and_opposite_embeddings():
    v = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    assert ib_score(v, 5.0 * v) == pytest.approx(100.0)  # cosine ignores scale
    assert ib_score(v, np.array([[2.0, -1.0, 0.0], [1.0, 0.0, 0.0]])) == pytest.approx(0.0, abs=1e-12)
    assert ib_score(v, -v) == pytest.approx(-100.0)
    assert ib_score(v, np.array([[1.0, 2.0, 0.0], [1.0, 0.0, 0.0]])) == pytest.approx(50.0)  # mean of pairs


def test_ib_score_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        ib_score(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="all zeros"):
        ib_score(np.ones((2, 3)), np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_sync_accuracy_counts_probabilities_strictly_above_threshold():
    assert sync_accuracy([0.9, 0.1, 0.6, 0.4]) == 0.5
    assert sync_accuracy(np.array([1.0, 1.0, 0.0])) == pytest.approx(2 / 3)
    assert sync_accuracy([0.5]) == 0.0  # Diff-Foley: torch.round(0.5) = 0, not aligned
    assert sync_accuracy([0.5000001]) == 1.0
    assert sync_accuracy([0.2, 0.4], threshold=0.3) == 0.5


@pytest.mark.parametrize(
    ("p", "match"), [([1.2], r"\[0, 1\]"), ([-0.1], r"\[0, 1\]"), ([np.nan], "non-finite"), ([], "no")]
)
def test_sync_accuracy_rejects_bad_input(p, match):
    with pytest.raises(ValueError, match=match):
        sync_accuracy(p)


# --------------------------------------------------------------------------------------------
# Event-onset F1 and the onset detector
# --------------------------------------------------------------------------------------------

TRUTH = [0.5, 1.0, 1.5]


def test_onset_f1_perfect_and_shifted_within_or_outside_tolerance():
    assert astuple(onset_f1(TRUTH, TRUTH, 0.05)) == (1.0, 1.0, 1.0, 3, 0, 0)
    assert onset_f1([t + 0.03 for t in TRUTH], TRUTH, 0.05).f1 == 1.0
    assert astuple(onset_f1([t + 0.07 for t in TRUTH], TRUTH, 0.05)) == (0.0, 0.0, 0.0, 0, 3, 3)
    assert onset_f1([0.75], [0.5], 0.25).tp == 1  # the window is inclusive (exact binary fractions)
    assert onset_f1([1.5, 0.5, 1.0], TRUTH, 0.05).f1 == 1.0  # input order does not matter


def test_onset_f1_extra_and_missing_detections():
    extra = onset_f1([*TRUTH, 1.8], TRUTH, 0.05)
    assert (extra.precision, extra.recall, extra.tp, extra.fp, extra.fn) == (0.75, 1.0, 3, 1, 0)
    assert extra.f1 == pytest.approx(2 * 0.75 / 1.75)
    missing = onset_f1(TRUTH[:2], TRUTH, 0.05)
    assert (missing.precision, missing.recall, missing.tp, missing.fp, missing.fn) == (1.0, 2 / 3, 2, 0, 1)


def test_onset_f1_counts_each_detection_and_each_truth_once():
    # (tp, fp, fn) for one detection near two true onsets, then two detections near one true onset.
    assert astuple(onset_f1([1.01], [1.0, 1.02], 0.05))[3:] == (1, 0, 1)
    assert astuple(onset_f1([0.99, 1.01], [1.0], 0.05))[3:] == (1, 1, 0)
    # Nearest-pair-first greedy would match 1.07 with 1.04 (0.03 apart) and strand both others; the maximum
    # matching pairs (1.00, 1.04) and (1.07, 1.11).
    assert onset_f1([1.04, 1.11], [1.0, 1.07], 0.05).tp == 2


def test_onset_f1_empty_cases():
    # Convention: with nothing to find and nothing found, every score is 1.
    assert astuple(onset_f1([], [], 0.05)) == (1.0, 1.0, 1.0, 0, 0, 0)
    assert astuple(onset_f1([0.3, 0.6], [], 0.05)) == (0.0, 0.0, 0.0, 0, 2, 0)
    assert astuple(onset_f1([], TRUTH, 0.05)) == (0.0, 0.0, 0.0, 0, 0, 3)
    with pytest.raises(ValueError, match="tolerance"):
        onset_f1(TRUTH, TRUTH, -0.01)


SR = 16000
CLICKS = [0.3, 0.72, 1.155, 1.6]  # not on 10 ms hop boundaries


def _clip(rng: np.random.Generator, seconds: float = 2.0) -> np.ndarray:
    return 1e-3 * rng.standard_normal(round(seconds * SR))  # a low noise floor, like the synthetic world's


def test_detect_onsets_finds_clicks_within_20_ms():
    rng = np.random.default_rng(9)
    audio = _clip(rng)
    n = round(0.03 * SR)
    for t in CLICKS:  # 30 ms noise bursts decaying with a 5 ms time constant
        s = round(t * SR)
        audio[s : s + n] += 0.5 * rng.standard_normal(n) * np.exp(-np.arange(n) / (0.005 * SR))
    found = detect_onsets(audio, SR)
    assert astuple(onset_f1(found, CLICKS, 0.02)) == (1.0, 1.0, 1.0, 4, 0, 0), found


def test_detect_onsets_finds_a_tone_burst_and_not_its_release():
    audio = _clip(np.random.default_rng(10))
    t = np.arange(round(0.1 * SR)) / SR  # 100 ms at 1.2 kHz, 2 ms attack, 10 ms release
    gate = np.minimum(np.minimum(t / 0.002, (t[-1] - t) / 0.01), 1.0)
    s = round(0.8 * SR)
    audio[s : s + t.size] += 0.3 * np.sin(2 * np.pi * 1200 * t) * gate
    found = detect_onsets(audio, SR)
    assert len(found) == 1 and abs(found[0] - 0.8) <= 0.02, found


def test_detect_onsets_finds_nothing_in_silence_or_steady_noise():
    assert detect_onsets(np.zeros(2 * SR), SR) == []
    assert detect_onsets(_clip(np.random.default_rng(11)), SR) == []
    assert detect_onsets(np.zeros(0), SR) == []


def test_detect_onsets_rejects_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        detect_onsets(np.zeros((2, SR)), SR)
    with pytest.raises(ValueError, match="win >= 2·hop"):
        detect_onsets(np.zeros(SR), SR, hop_s=0.01, win_s=0.015)
