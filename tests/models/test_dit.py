"""Velocity DiT: shapes for every size, paper parameter counts, RoPE's relative positions, zero-init velocity,
null conditioning, the time token, a tiny overfit, and the config's round trip and errors."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaflow.config.sizes import DIT_SIZES, PAPER_COUNT_DIMS, PAPER_PARAMETERS, DiTSize
from vaflow.models.dit import (
    DiTConfig,
    SelfAttention,
    VelocityDiT,
    apply_rope,
    count_parameters,
    dit_config,
    rope_cos_sin,
)

B, T_A, D_A, T_V, D_V = 2, 7, 8, 5, 12


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models are bound by op dispatch: a second thread only adds synchronisation (10× slower when the
    cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(size: str = "tiny", cross_attention: bool = True, seed: int = 0) -> VelocityDiT:
    torch.manual_seed(seed)
    return VelocityDiT(dit_config(size, D_A, D_V, cross_attention=cross_attention)).eval()


def _randomize_output(model: VelocityDiT) -> VelocityDiT:
    """Re-init the zero output projection, so that the output shows what the trunk computes."""
    torch.nn.init.normal_(model.proj_out.weight, std=0.5)
    return model


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, T_A, D_A, generator=g),
        torch.rand(B, generator=g),
        torch.randn(B, T_V, D_V, generator=g),
    )


# --------------------------------------------------------------------------------------------
# Shapes and sizes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", sorted(DIT_SIZES))
@pytest.mark.parametrize("cross_attention", [True, False])
def test_output_shape_for_every_size(size, cross_attention):
    cond_shapes = [(B, T_V), None]
    if size in ("tiny", "small"):  # real forwards
        model = _model(size, cross_attention)
        x_t, t, cond = _inputs()
        with torch.no_grad():
            for c in (cond, None):
                assert model(x_t, t, c).shape == (B, T_A, D_A)
        return
    # Paper sizes on the meta device at the paper's dims: shapes propagate, nothing is allocated.
    d_a, d_v = PAPER_COUNT_DIMS
    with torch.device("meta"):
        model = VelocityDiT(dit_config(size, d_a, d_v, cross_attention=cross_attention))
        for shape in cond_shapes:
            cond = None if shape is None else torch.empty(*shape, d_v)
            v = model(torch.empty(B, T_A, d_a), torch.empty(B), cond)
            assert v.shape == (B, T_A, d_a) and v.device.type == "meta"


@pytest.mark.parametrize("size", sorted(PAPER_PARAMETERS))
def test_paper_sizes_count_within_five_percent(size):
    counted = count_parameters(dit_config(size, *PAPER_COUNT_DIMS))
    assert abs(counted / PAPER_PARAMETERS[size] - 1) < 0.05, (size, counted)


def test_count_parameters_matches_a_real_model():
    model = _model("tiny")
    assert count_parameters(model.config) == sum(p.numel() for p in model.parameters())


def test_no_cross_attention_has_no_cond_parameters():
    names = [n for n, _ in _model("tiny", cross_attention=False).named_parameters()]
    assert not [n for n in names if "cross" in n or "cond" in n]
    assert any("cross_attn" in n for n, _ in _model("tiny").named_parameters())


def test_sizes_module_imports_without_torch():
    code = "import sys, vaflow.config.sizes; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------------------------
# RoPE
# --------------------------------------------------------------------------------------------


def _rotate_at(x: torch.Tensor, position: float, base: float = 10000.0) -> torch.Tensor:
    cos, sin = rope_cos_sin(torch.tensor([position]), x.shape[-1], base)
    return apply_rope(x[None], cos, sin)[0]


def test_rope_scores_depend_on_relative_position_only():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 16, generator=g, dtype=torch.float64).float()
    for m, n, offset in [(0, 3, 5), (7, 2, 40), (1, 1, 100), (12, 30, 17)]:
        score = _rotate_at(q, m) @ _rotate_at(k, n)
        shifted = _rotate_at(q, m + offset) @ _rotate_at(k, n + offset)
        assert torch.allclose(score, shifted, atol=1e-4), (m, n, offset)
    # …and it does depend on the relative position.
    assert not torch.allclose(
        _rotate_at(q, 0) @ _rotate_at(k, 1), _rotate_at(q, 0) @ _rotate_at(k, 4), atol=1e-3
    )


def test_rope_preserves_norms_and_is_identity_at_zero():
    x = torch.randn(3, 10, 32)
    cos, sin = rope_cos_sin(torch.arange(10) * 3.7, 32)
    assert torch.allclose(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.equal(apply_rope(x[:, :1], *rope_cos_sin(torch.zeros(1), 32)), x[:, :1])


def test_self_attention_is_invariant_to_a_shift_of_all_positions():
    torch.manual_seed(0)
    config = dit_config("tiny", D_A, D_V)
    attn = SelfAttention(config)
    x = torch.randn(B, 6, config.width)
    positions = torch.arange(6)
    with torch.no_grad():
        y = attn(x, *rope_cos_sin(positions, config.head_dim))
        y_shifted = attn(x, *rope_cos_sin(positions + 11, config.head_dim))
        y_spread = attn(x, *rope_cos_sin(positions * 2, config.head_dim))
    assert torch.allclose(y, y_shifted, atol=1e-5)
    assert not torch.allclose(y, y_spread, atol=1e-4)  # relative distances do matter


# --------------------------------------------------------------------------------------------
# Initialisation, conditioning, time
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cross_attention", [True, False])
def test_initial_velocity_is_exactly_zero(cross_attention):
    x_t, t, cond = _inputs()
    with torch.no_grad():
        v = _model("small", cross_attention)(x_t, t, cond)
    assert torch.equal(v, torch.zeros_like(v))


def test_null_condition_equals_zero_features_of_any_length():
    model = _randomize_output(_model())
    x_t, t, _ = _inputs()
    with torch.no_grad():
        v_null = model(x_t, t, None)
        for t_v in (1, T_V, 13):
            assert torch.allclose(v_null, model(x_t, t, torch.zeros(B, t_v, D_V)), atol=1e-6)


def test_without_cross_attention_the_output_ignores_cond():
    model = _randomize_output(_model(cross_attention=False))
    x_t, t, cond = _inputs()
    with torch.no_grad():
        v = model(x_t, t, cond)
        assert torch.equal(v, model(x_t, t, None))
        assert torch.equal(v, model(x_t, t, 5 * torch.randn(B, 3, D_V)))


def test_with_cross_attention_the_output_depends_on_cond():
    model = _randomize_output(_model())
    x_t, t, cond = _inputs()
    with torch.no_grad():
        v = model(x_t, t, cond)
        assert (v - model(x_t, t, cond + torch.randn_like(cond))).abs().max() > 1e-3
        assert (v - model(x_t, t, None)).abs().max() > 1e-3


def test_the_time_token_matters():
    model = _randomize_output(_model())
    x_t, _, cond = _inputs()
    with torch.no_grad():
        v_early = model(x_t, torch.full((B,), 0.1), cond)
        v_late = model(x_t, torch.full((B,), 0.9), cond)
        assert (v_early - v_late).abs().max() > 1e-3
        # A scalar t is broadcast over the batch.
        assert torch.allclose(model(x_t, torch.tensor(0.1), cond), v_early)


def test_batch_items_are_independent():
    model = _randomize_output(_model())
    x_t, t, cond = _inputs()
    with torch.no_grad():
        v = model(x_t, t, cond)
        assert torch.allclose(v[:1], model(x_t[:1], t[:1], cond[:1]), rtol=1e-5, atol=1e-5)


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = VelocityDiT(dit_config("tiny", D_A, D_V))
    x_0, x_1, cond = torch.randn(4, T_A, D_A), torch.randn(4, T_A, D_A), torch.randn(4, T_V, D_V)
    t = torch.linspace(0.1, 0.9, 4)
    x_t = (1 - t[:, None, None]) * x_0 + t[:, None, None] * x_1  # Eq. 3
    target = x_1 - x_0  # Eq. 8
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = (model(x_t, t, cond) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_forward_traces_as_one_graph():
    """torch.compile-ready: dynamo captures the whole forward, with and without cond, with no graph break."""
    model = _model()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    x_t, t, cond = _inputs()
    with torch.no_grad():
        assert torch.allclose(compiled(x_t, t, cond), model(x_t, t, cond))


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def test_config_round_trips_through_json():
    config = dit_config("small", 16, 64, cross_attention=False)
    assert DiTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_config_refuses_unknown_keys_naming_them():
    d = dit_config("tiny", D_A, D_V).to_dict() | {"widht": 64, "dropout": 0.1}
    with pytest.raises(ValueError, match=r"unknown keys \['dropout', 'widht'\]"):
        DiTConfig.from_dict(d)


@pytest.mark.parametrize(
    ("width", "heads", "message"),
    [(100, 3, "width 100 is not divisible by heads 3"), (36, 4, "head dim 9 .* must be even")],
)
def test_bad_heads_are_refused_naming_the_numbers(width, heads, message):
    with pytest.raises(ValueError, match=message):
        DiTConfig(latent_dim=D_A, cond_dim=D_V, width=width, depth=1, heads=heads)
    with pytest.raises(ValueError, match=message):
        DiTSize(width=width, depth=1, heads=heads)


def test_unknown_size_suggests_the_nearest_name():
    with pytest.raises(ValueError, match=r"'dit_xxl'.*did you mean 'dit_xl'.*known"):
        dit_config("dit_xxl", D_A, D_V)


def test_wrong_input_dims_are_refused():
    model = _model()
    x_t, t, cond = _inputs()
    with pytest.raises(ValueError, match="x_t"):
        model(x_t[..., :-1], t, cond)
    with pytest.raises(ValueError, match="cond"):
        model(x_t, t, cond[..., :-1])


def test_the_size_table_in_the_design_doc_is_what_the_model_counts():
    """docs/design.md's DiT table is documentation others quote: keep it equal to the counted truth."""
    doc = (
        (Path(__file__).resolve().parents[2] / "docs" / "design.md")
        .read_text()
        .split("## 11. Network sizes")[1]
    )
    rows = re.findall(r"^\| (\w+) +\| +(\d+) \| +(\d+) \| +(\d+) \| +([\d,]+) \|", doc, re.M)
    assert {name for name, *_ in rows} == set(DIT_SIZES)
    for name, width, depth, heads, counted in rows:
        size = DIT_SIZES[name]
        assert (size.width, size.depth, size.heads) == (int(width), int(depth), int(heads)), name
        assert count_parameters(dit_config(name, *PAPER_COUNT_DIMS)) == int(counted.replace(",", "")), name
    small = re.search(r"has ([\d,]+) parameters", doc).group(1)
    assert count_parameters(dit_config("small", 16, 64)) == int(small.replace(",", ""))
