"""Rows over seeds and the paper's pairwise claims (vaflow.eval.verdicts) on figures whose answers are known."""

from __future__ import annotations

import math

import pytest

from vaflow.eval import verdicts


def test_the_interval_is_students_t_over_the_seeds():
    s = verdicts.summarize([1.0, 2.0, 3.0])
    # t(0.975, 2) = 4.3027, sample std 1, three seeds.
    assert s.n == 3 and s.mean == 2.0 and s.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert s.text() == "2.00 ± 2.48"
    one = verdicts.summarize([5.0])
    assert one.n == 1 and math.isnan(one.half_width) and one.text(1) == "5.0 (1 seed)"
    with pytest.raises(ValueError, match="non-finite"):
        verdicts.summarize([1.0, float("nan")])
    with pytest.raises(ValueError, match="no values"):
        verdicts.summarize([])


def test_a_consistent_gain_supports_its_claim_and_refutes_the_opposite_one():
    a = {0: 10.0, 1: 11.0, 2: 10.5}  # FD of the tuned prior
    b = {0: 12.0, 1: 13.5, 2: 12.4}  # FD of the Gaussian prior: worse on every seed
    v = verdicts.judge(a, b, "lower")
    assert v.outcome == "supports" and v.seeds == (0, 1, 2) and v.p_value < 0.05
    assert v.mean_difference == pytest.approx(-2.1333333)
    assert verdicts.judge(b, a, "lower").outcome == "refutes"
    assert verdicts.judge(a, b, "higher").outcome == "refutes"  # the same figures read as "higher is better"
    assert v.test.startswith("paired t-test")


def test_noise_larger_than_the_difference_cannot_tell():
    a = {0: 10.0, 1: 14.0, 2: 9.0}
    b = {0: 12.0, 1: 11.0, 2: 11.5}
    v = verdicts.judge(a, b, "lower")
    assert v.outcome == "cannot tell" and "p = " in v.reason and v.p_value >= 0.05


def test_only_shared_seeds_are_paired_and_two_pairs_are_needed():
    v = verdicts.judge({0: 1.0, 1: 2.0, 7: 0.0}, {1: 3.0, 2: 9.0, 7: 1.0}, "lower")
    assert v.seeds == (1, 7) and v.outcome == "supports"  # the same -1 on both shared seeds: p = 0
    few = verdicts.judge({0: 1.0, 1: 2.0}, {1: 5.0}, "lower")
    assert few.outcome == "cannot tell" and few.seeds == (1,) and "a paired test needs 2" in few.reason
    same = verdicts.judge({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}, "higher")
    assert same.outcome == "cannot tell" and same.reason == "the rows are equal on every seed"


def test_bad_directions_and_failed_seeds_are_refused():
    with pytest.raises(ValueError, match="better: 'smaller'"):
        verdicts.judge({0: 1.0}, {0: 2.0}, "smaller")
    with pytest.raises(ValueError, match="non-finite"):
        verdicts.judge({0: 1.0, 1: float("inf")}, {0: 2.0, 1: 2.0}, "lower")
