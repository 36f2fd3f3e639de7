"""VAFlow end to end on a small paired problem: both priors learn a known map x_v -> x_1, export round-trips."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vaflow.models import artifacts
from vaflow.models.align_vae import AlignVAE, AlignVAEConfig
from vaflow.models.dit import VelocityDiT, dit_config
from vaflow.models.vaflow import FlowSettings, VAFlow, latent_statistics

T_V, D_V, T_A, D_A = 4, 6, 8, 3
PROJ = torch.randn(D_V, D_A, generator=torch.Generator().manual_seed(7))


def target(x_v: torch.Tensor) -> torch.Tensor:
    """The known map: x_v interpolated to T_a and projected to D_a, shifted off zero so the stats matter."""
    up = F.interpolate(x_v.transpose(1, 2), size=T_A, mode="linear", align_corners=False).transpose(1, 2)
    return torch.tanh(up @ PROJ) * 2.0 + 0.5  # (B, T_a, D_a)


def build(prior: str, objective: str = "flow") -> VAFlow:
    torch.manual_seed(0)
    align = AlignVAE(AlignVAEConfig(D_V, T_V, D_A, T_A, channels=16, blocks=1))
    dit = VelocityDiT(dit_config("tiny", D_A, D_V))
    data = target(torch.randn(256, T_V, D_V))
    n = data.shape[0] * data.shape[1]
    mean, std = latent_statistics(data.sum((0, 1)), data.square().sum((0, 1)), n)
    settings = FlowSettings(prior=prior, objective=objective, cond_dropout=0.1)
    return VAFlow(align.encoder if prior == "video" else None, dit, mean, std, settings)


def train(model: VAFlow, steps: int = 300) -> tuple[float, float]:
    g = torch.Generator().manual_seed(1)
    x_v = torch.randn(64, T_V, D_V, generator=g)
    mean, std = target(x_v), torch.full((64, T_A, D_A), 0.01)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(steps):
        idx = torch.randint(64, (32,), generator=g)
        loss, _ = model(mean[idx], std[idx], x_v[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return sum(losses[:20]) / 20, sum(losses[-20:]) / 20


@pytest.mark.parametrize("prior", ["video", "gaussian"])
def test_training_learns_the_map_for_both_priors(prior):
    model = build(prior)
    first, last = train(model)
    assert last < 0.5 * first, (first, last)
    model.eval()
    x_v = torch.randn(16, T_V, D_V, generator=torch.Generator().manual_seed(2))
    truth = target(x_v)
    g = torch.Generator().manual_seed(3)
    x_0 = model.denormalize(model.draw_prior(x_v, (16, T_A, D_A), g))
    sampled, nfe = model.generate(
        x_v, T_A, solver="midpoint", steps=10, generator=torch.Generator().manual_seed(3)
    )
    assert nfe == 20
    err_prior = (x_0 - truth).square().mean().item()
    err_sample = (sampled - truth).square().mean().item()
    assert err_sample < 0.15 * err_prior, (err_sample, err_prior)


def test_the_diffusion_baseline_learns_the_map_and_samples_by_ddim():
    """Figure 3's baseline through the same estimator: v-prediction from Gaussian noise, DDIM steps as NFE."""
    model = build("gaussian", "diffusion")
    first, last = train(model)
    assert last < 0.5 * first, (first, last)
    model.eval()
    x_v = torch.randn(16, T_V, D_V, generator=torch.Generator().manual_seed(2))
    truth = target(x_v)
    x_0 = model.denormalize(model.draw_prior(x_v, (16, T_A, D_A), torch.Generator().manual_seed(3)))
    sampled, nfe = model.generate(x_v, T_A, steps=20, generator=torch.Generator().manual_seed(3))
    assert nfe == 20
    err_prior = (x_0 - truth).square().mean().item()
    err_sample = (sampled - truth).square().mean().item()
    assert err_sample < 0.25 * err_prior, (err_sample, err_prior)
    with pytest.raises(ValueError, match="needs prior 'gaussian'"):
        build("video", "diffusion")


def test_cfg_zero_equals_conditional_sampling():
    model = build("video").eval()
    with torch.no_grad():
        model.dit.proj_out.weight.normal_()  # a non-zero velocity so the comparison means something
    x_v = torch.randn(2, T_V, D_V)
    a, _ = model.generate(x_v, T_A, steps=4, cfg=0.0, generator=torch.Generator().manual_seed(0))
    b, _ = model.generate(x_v, T_A, steps=4, cfg=1.5, generator=torch.Generator().manual_seed(0))
    c, _ = model.generate(x_v, T_A, steps=4, cond="zero", generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(a, b) and not torch.allclose(a, c)
    with pytest.raises(ValueError, match="cfg"):
        model.generate(x_v, T_A, cfg=1.0, cond="zero")


def test_stage3_adds_the_kl_term_and_trains_the_encoder():
    model = build("video")
    assert not any(p.requires_grad for p in model.encoder.parameters())  # stage 2: frozen
    tuned = VAFlow(model.encoder, model.dit, model.latent_mean, model.latent_std,
                   FlowSettings(kl_weight=8e-4, tune_encoder=True))  # fmt: skip
    x_v = torch.randn(4, T_V, D_V)
    loss, parts = tuned(target(x_v), torch.full((4, T_A, D_A), 0.01), x_v)
    assert set(parts) == {"flow", "kl"}
    loss.backward()
    assert all(p.grad is not None for p in tuned.encoder.parameters())


def test_export_round_trip_and_identity_checks(tmp_path):
    model = build("video")
    features = {"kind": "cavp", "model_name": "cavp", "weights_hash": "abc", "fps": 4.0, "dim": D_V}
    wavevae = {"weights_hash": "def", "hop": 256, "latent_dim": D_A, "latent_length": T_A}
    artifacts.save_vaflow(model, tmp_path, T_A, features, wavevae, [{"stage": "train_flow", "steps": 1}])
    loaded, card = artifacts.load_vaflow(tmp_path, features, wavevae)
    assert card["latent"]["length"] == T_A
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(artifacts.ModelMismatchError, match="weights_hash"):
        artifacts.load_vaflow(tmp_path, {**features, "weights_hash": "other"}, wavevae)
    with pytest.raises(artifacts.ModelMismatchError, match="WaveVAE"):
        artifacts.load_vaflow(tmp_path, features, {**wavevae, "weights_hash": "x"})
    with pytest.raises(FileNotFoundError, match="train_flow"):
        artifacts.load_vaflow(tmp_path / "missing")


def test_gaussian_prior_holds_no_encoder_and_draws_standard_normal():
    model = build("gaussian")
    assert model.encoder is None
    x_0 = model.draw_prior(torch.randn(512, T_V, D_V), (512, T_A, D_A), torch.Generator().manual_seed(0))
    assert abs(x_0.mean().item()) < 0.05 and abs(x_0.std().item() - 1) < 0.05
