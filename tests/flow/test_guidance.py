"""Condition dropout (§3.3) and classifier-free guidance (Eq. 10)."""

from __future__ import annotations

import pytest
import torch

from vaflow.flow import drop_condition, guided


class ToyVelocity:
    """v = a·x + b·mean(cond) + t per row, recording the batch size and condition of each call."""

    def __init__(self, a: float = -0.7, b: float = 2.0) -> None:
        self.a, self.b = a, b
        self.calls: list[tuple[int, torch.Tensor | None]] = []

    def __call__(self, x, t, cond):
        self.calls.append((x.shape[0], cond))
        v = self.a * x + t[:, None, None]  # x (B, T, D), t (B,)
        if cond is not None:
            v = v + self.b * cond.mean(dim=(1, 2))[:, None, None]
        return v


def _inputs(batch=3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 2, generator=g)
    t = torch.rand(batch, generator=g)
    cond = torch.randn(batch, 6, 5, generator=g) + 1.0  # nonzero mean, so ∅ changes v
    return x, t, cond


def test_drop_p0_is_identity_and_p1_zeroes_all():
    _, _, cond = _inputs()
    assert drop_condition(cond, 0.0) is cond
    dropped = drop_condition(cond, 1.0, generator=torch.Generator().manual_seed(0))
    assert dropped.shape == cond.shape and torch.equal(dropped, torch.zeros_like(cond))


def test_drop_fraction_matches_p_and_rows_are_all_or_nothing():
    cond = torch.randn(4000, 3, 2, generator=torch.Generator().manual_seed(0))
    out = drop_condition(cond, 0.1, generator=torch.Generator().manual_seed(5))
    zero_rows = (out == 0).flatten(1).all(dim=1)
    kept_rows = (out == cond).flatten(1).all(dim=1)
    assert bool((zero_rows | kept_rows).all())  # each row is either dropped whole or kept whole
    assert abs(zero_rows.float().mean().item() - 0.1) < 0.02
    again = drop_condition(cond, 0.1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out, again)


def test_drop_keeps_gradient_for_kept_rows():
    cond = torch.randn(64, 3, requires_grad=True)
    out = drop_condition(cond, 0.5, generator=torch.Generator().manual_seed(2))
    out.sum().backward()
    kept = (out != 0).all(dim=1)
    assert 0 < int(kept.sum()) < 64
    assert torch.equal(cond.grad[kept], torch.ones_like(cond.grad[kept]))
    assert torch.equal(cond.grad[~kept], torch.zeros_like(cond.grad[~kept]))


def test_drop_rejects_bad_probability():
    with pytest.raises(ValueError, match="probability"):
        drop_condition(torch.ones(2, 3), 1.5)


def test_gamma_zero_is_the_conditional_velocity_with_one_call():
    x, t, cond = _inputs()
    velocity = ToyVelocity()
    f = guided(velocity, cond, 0.0)
    v = f(x, t)
    assert torch.equal(v, ToyVelocity()(x, t, cond))
    assert len(velocity.calls) == 1 and velocity.calls[0] == (3, cond)


def test_gamma_zero_without_condition_calls_with_none():
    x, t, _ = _inputs()
    velocity = ToyVelocity()
    v = guided(velocity, None, 0.0)(x, t)
    assert torch.equal(v, ToyVelocity()(x, t, None))
    assert velocity.calls == [(3, None)]


@pytest.mark.parametrize("gamma", [1.0, 3.5, -0.5])
def test_cfg_matches_eq10_by_hand_in_one_batched_call(gamma):
    x, t, cond = _inputs()
    ref = ToyVelocity()
    v_cond = ref(x, t, cond)
    v_null = ref(x, t, torch.zeros_like(cond))
    expected = (1 + gamma) * v_cond - gamma * v_null
    velocity = ToyVelocity()
    v = guided(velocity, cond, gamma)(x, t)
    torch.testing.assert_close(v, expected, rtol=1e-6, atol=1e-6)
    assert len(velocity.calls) == 1
    rows, passed = velocity.calls[0]
    assert rows == 6  # [conditional, null] in one call of 2B rows
    assert torch.equal(passed[:3], cond) and torch.equal(passed[3:], torch.zeros_like(cond))
    assert not torch.allclose(v, v_cond)  # guidance did something: the null branch differs


def test_cfg_needs_a_condition_and_a_matching_batch():
    with pytest.raises(ValueError, match="needs a condition"):
        guided(ToyVelocity(), None, 2.0)
    x, t, cond = _inputs()
    with pytest.raises(ValueError, match="rows"):
        guided(ToyVelocity(), cond[:2], 2.0)(x, t)
