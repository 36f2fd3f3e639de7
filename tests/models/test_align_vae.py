"""The alignment VAE: shapes, the Eq. 4-7 losses, and a contrastive term that prefers matched pairs."""

from __future__ import annotations

import pytest
import torch

from vaflow.models.align_vae import (
    AlignLossWeights,
    AlignVAE,
    AlignVAEConfig,
    Posterior,
    contrastive_loss,
    kl_divergence,
)

CFG = AlignVAEConfig(feature_dim=12, feature_length=8, latent_dim=4, latent_length=20, channels=16, blocks=1)


def test_shapes_and_interpolation():
    model = AlignVAE(CFG)
    x_v = torch.randn(3, 8, 12)
    post = model.encoder(x_v)
    assert post.mean.shape == post.std.shape == (3, 20, 4)
    assert (post.std > 0).all()
    assert model.decoder(post.sample()).shape == (3, 8, 12)
    assert model.encoder(x_v, latent_length=7).mean.shape == (3, 7, 4)  # other window lengths
    loss, parts = model(x_v)
    assert loss.ndim == 0 and set(parts) == {"kl", "rec", "con"}


def test_kl_is_zero_for_the_standard_normal_and_positive_otherwise():
    zeros, ones = torch.zeros(2, 5, 4), torch.ones(2, 5, 4)
    assert kl_divergence(Posterior(zeros, ones, channel_dim=-1)).item() == pytest.approx(0.0, abs=1e-7)
    # KL(N(1, 1) || N(0, 1)) = 0.5 per channel, summed over 4 channels.
    assert kl_divergence(Posterior(ones, ones, channel_dim=-1)).item() == pytest.approx(2.0)


def test_contrastive_loss_is_lower_for_matched_than_for_shuffled_pairs():
    torch.manual_seed(0)
    x = torch.randn(16, 8, 12)
    near = x + 0.1 * torch.randn_like(x)
    g = torch.Generator().manual_seed(0)
    matched = contrastive_loss(near, x, generator=g)
    shuffled = contrastive_loss(near[torch.randperm(16)], x, generator=torch.Generator().manual_seed(0))
    assert matched < shuffled
    # Three scales of a 16-way InfoNCE: a perfect match at τ = 0.7 still pays the softmax over 16 candidates.
    assert 0 < matched.item() < 3 * torch.log(torch.tensor(16.0)).item()


def test_a_fixed_generator_fixes_the_loss():
    model = AlignVAE(CFG)
    x = torch.randn(4, 8, 12)
    a = model(x, generator=torch.Generator().manual_seed(3))[0]
    b = model(x, generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b)


def test_weights_combine_as_eq7():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 12)
    model = AlignVAE(CFG, AlignLossWeights(kl=0.5, rec=2.0, con=3.0))
    loss, parts = model(x, generator=torch.Generator().manual_seed(1))
    p = {k: float(v) for k, v in parts.items()}
    assert loss.item() == pytest.approx(0.5 * p["kl"] + 2.0 * p["rec"] + 3.0 * p["con"], rel=1e-5)


def test_training_reduces_reconstruction_and_contrastive_terms():
    torch.manual_seed(0)
    x = torch.randn(16, 8, 12)
    model = AlignVAE(CFG)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss, parts = model(x)
        first = first or {k: float(v) for k, v in parts.items()}
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert parts["rec"] < 0.8 * first["rec"]
    assert parts["con"] < 0.75 * first["con"]  # from ~3·log(16): chance over the batch at three scales


def test_config_checks_and_round_trip():
    assert AlignVAEConfig.from_dict(CFG.to_dict()) == CFG
    with pytest.raises(ValueError, match="odd"):
        AlignVAEConfig(12, 8, 4, 20, kernel=4)
    with pytest.raises(ValueError, match="unknown keys"):
        AlignVAEConfig.from_dict({**CFG.to_dict(), "width": 3})
