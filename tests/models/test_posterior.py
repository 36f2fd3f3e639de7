"""The one posterior: both VAEs' KL terms, values and gradients, are exactly their former formulas."""

from __future__ import annotations

import torch

from vaflow.models import align_vae, wavevae
from vaflow.models.posterior import Posterior


def _leaves(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(shape, generator=g, requires_grad=True)
    std = (torch.rand(shape, generator=g) + 0.05).requires_grad_(True)
    return mean, std


def _kl_and_grads(kl_of, shape):
    mean, std = _leaves(shape)
    kl = kl_of(mean, std)
    kl.backward()
    return kl.detach(), mean.grad, std.grad


def _same(got, want) -> None:
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b), float((a - b).abs().max())


def test_wavevae_kl_is_its_former_formula():
    def frozen(
        mean, std
    ):  # channel-major (B, D, T), SAO's term; σ² formed twice, as the former properties did
        return (mean * mean + std * std - torch.log(std * std) - 1).sum(1).mean()

    def now(mean, std):
        return Posterior(mean, std, channel_dim=1).kl(wavevae.SAO_KL_SCALE, square_once=False)

    _same(_kl_and_grads(now, (2, 3, 5)), _kl_and_grads(frozen, (2, 3, 5)))


def test_wavevae_bottleneck_is_channel_major():
    h = torch.randn(2, 6, 4)
    p = wavevae.VAEBottleneck()(h)
    assert p.mean.shape == (2, 3, 4) and p.channel_dim == 1


def test_align_vae_kl_is_its_former_formula():
    def frozen(mean, std):  # time-major (B, T, D), Eq. 4
        var = std.square()
        return 0.5 * (mean.square() + var - var.log() - 1).sum(-1).mean()

    def now(mean, std):
        return align_vae.kl_divergence(Posterior(mean, std, channel_dim=-1))

    _same(_kl_and_grads(now, (2, 5, 3)), _kl_and_grads(frozen, (2, 5, 3)))


def test_align_encoder_posterior_is_time_major():
    config = align_vae.AlignVAEConfig(feature_dim=4, feature_length=3, latent_dim=2, latent_length=5)
    p = align_vae.AlignEncoder(config)(torch.randn(2, 3, 4))
    assert p.mean.shape == (2, 5, 2) and p.channel_dim == -1


def test_sample_draws_the_same_noise_as_randn():
    mean, std = torch.zeros(2, 3, 4), torch.full((2, 3, 4), 2.0)
    z = Posterior(mean, std, channel_dim=1).sample(torch.Generator().manual_seed(7))
    assert torch.equal(z, 2.0 * torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(7)))
