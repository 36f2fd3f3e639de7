"""WaveVAE: SAO key layout, the tiny reference fixture, strict checkpoint import, mono adapter, KL closed form."""

import copy
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vaflow.hashing import weights_hash
from vaflow.models.artifacts import MissingModelFileError, ModelFileError
from vaflow.models.wavevae import (
    SAO_KL_SCALE,
    SAO_PREFIX,
    SIZES,
    Posterior,
    WaveVAE,
    WaveVAEConfig,
    build,
    load_wavevae,
    save_wavevae,
)

# The reference fixtures live in `shared/` beside the repository (DESIGN §10); VAFLOW_FIXTURES overrides.
FIXTURES = Path(
    os.environ.get("VAFLOW_FIXTURES", Path(__file__).resolve().parents[3] / "shared" / "fixtures")
)


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURES / "oobleck_tiny_reference.pt", weights_only=True)


@pytest.fixture
def tiny() -> WaveVAE:
    torch.manual_seed(0)
    model = build("tiny").eval()
    with torch.no_grad():  # non-trivial Snake parameters, so that a dropped α/β would show
        for name, p in model.named_parameters():
            if name.endswith(("alpha", "beta")):
                p.uniform_(-0.5, 0.5)
    return model


def _outputs(model: WaveVAE, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        posterior = model.encode(audio)
        return posterior.mean, posterior.std, model.decode(posterior.mean)


# --------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------


def test_sao_size_has_exactly_the_checkpoint_names_and_shapes():
    keys = json.loads((FIXTURES / "sao_vae_keys.json").read_text())
    assert keys["prefix_in_full_checkpoint"] == SAO_PREFIX
    model = build("sao", device="meta")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == keys["tensors"]
    config = keys["config"]
    sao = SIZES["sao"]
    assert (sao.audio_channels, sao.channels, list(sao.c_mults), list(sao.strides)) == (
        config["in_channels"],
        config["channels"],
        config["c_mults"],
        config["strides"],
    )
    assert (sao.latent_dim, sao.encoder_latent_dim, sao.use_snake, sao.final_tanh) == (
        config["latent_dim"],
        config["encoder_latent_dim"],
        config["use_snake"],
        config["final_tanh"],
    )
    assert (sao.hop, sao.sample_rate) == (config["downsampling_ratio"], config["sample_rate"])


def test_tiny_size_is_the_fixture_architecture(reference):
    config, tiny = reference["config"], SIZES["tiny"]
    assert config["in_channels"] == config["out_channels"] == tiny.audio_channels
    assert (tiny.channels, list(tiny.c_mults), list(tiny.strides)) == (
        config["channels"],
        config["c_mults"],
        config["strides"],
    )
    assert (tiny.latent_dim, tiny.encoder_latent_dim) == (config["latent_dim"], config["encoder_latent_dim"])
    assert (tiny.use_snake, tiny.final_tanh) == (config["use_snake"], config["final_tanh"])


def test_reference_fixture_is_reproduced(reference):
    model = build("tiny")
    model.load_state_dict(reference["state_dict"], strict=True)
    model.eval()
    audio = reference["input"]
    with torch.no_grad():
        h = model.encoder(audio)
        posterior = model.bottleneck(h)
        decoded = model.decode(posterior.mean)
    torch.testing.assert_close(h, reference["encoder_output"], atol=1e-5, rtol=0)
    torch.testing.assert_close(posterior.mean, reference["latent_mean"], atol=1e-5, rtol=0)
    torch.testing.assert_close(posterior.std, reference["latent_std"], atol=1e-5, rtol=0)
    torch.testing.assert_close(decoded, reference["decoder_output_from_mean"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_shapes_and_lengths(size):
    config = SIZES[size]
    model = build(size)
    audio = torch.randn(2, config.audio_channels, 3 * config.hop)
    out = model(audio)
    assert out.posterior.mean.shape == out.posterior.std.shape == out.z.shape == (2, config.latent_dim, 3)
    assert out.reconstruction.shape == audio.shape
    assert out.kl.shape == ()
    assert (out.posterior.std > 0).all()
    out.reconstruction.pow(2).mean().add(out.kl).backward()  # every parameter is reached
    assert all(p.grad is not None for p in model.parameters())


def test_length_not_multiple_of_hop_is_an_error():
    model = build("tiny")
    with pytest.raises(ValueError, match="multiple of the hop 8"):
        model.encode(torch.randn(1, 1, 20))


def test_config_validation_and_registry():
    with pytest.raises(ValueError, match="same"):
        WaveVAEConfig(c_mults=(1, 2), strides=(2, 4, 4))
    with pytest.raises(ValueError, match="even"):
        WaveVAEConfig(c_mults=(1, 2), strides=(2, 3))
    with pytest.raises(ValueError, match="known sizes"):
        build("huge")
    assert WaveVAEConfig.from_dict(SIZES["small"].to_dict()) == SIZES["small"]
    assert SIZES["small"].hop == 256 and SIZES["sao"].hop == 2048


def test_model_deep_copies(tiny):
    # EMA copies the model; weight norm must not get in the way.
    twin = copy.deepcopy(tiny)
    audio = torch.randn(1, 1, 64)
    for a, b in zip(_outputs(tiny, audio), _outputs(twin, audio), strict=True):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------------------------
# Bottleneck and mono adapter
# --------------------------------------------------------------------------------------------


def test_kl_is_twice_the_gaussian_kl_summed_over_channels():
    torch.manual_seed(0)
    mean, std = torch.randn(3, 5, 7), torch.rand(3, 5, 7) + 0.1
    closed_form = 0.5 * (mean**2 + std**2 - 2 * std.log() - 1)  # KL(N(μ, σ²) ‖ N(0, 1)) per element
    expected = 2 * closed_form.sum(1).mean()
    torch.testing.assert_close(
        Posterior(mean, std, channel_dim=1).kl(SAO_KL_SCALE, square_once=False), expected
    )
    unit = Posterior(torch.zeros(2, 3, 4), torch.ones(2, 3, 4), channel_dim=1)
    assert unit.kl(SAO_KL_SCALE, square_once=False).abs() < 1e-7


def test_bottleneck_std_and_sample_statistics():
    torch.manual_seed(0)
    model = build("tiny")
    h = torch.randn(2, 8, 5)
    posterior = model.bottleneck(h)
    torch.testing.assert_close(posterior.mean, h[:, :4])
    torch.testing.assert_close(posterior.std, torch.nn.functional.softplus(h[:, 4:]) + 1e-4)
    p = Posterior(torch.full((1, 1, 200_000), 2.0), torch.full((1, 1, 200_000), 0.5), channel_dim=1)
    z = p.sample(torch.Generator().manual_seed(0))
    assert abs(z.mean() - 2.0) < 0.01 and abs(z.std() - 0.5) < 0.01


def test_mono_adapter_duplicates_in_and_averages_out():
    torch.manual_seed(0)
    config = WaveVAEConfig(audio_channels=2, channels=4, c_mults=(1, 2), strides=(2, 4), latent_dim=3)
    model = build(config).eval()
    mono = torch.randn(2, 32)
    with torch.no_grad():
        p_mono = model.encode_mono(mono)
        p_stereo = model.encode(torch.stack([mono, mono], dim=1))
        torch.testing.assert_close(p_mono.mean, p_stereo.mean)
        out = model.decode_mono(p_mono.mean)
        assert out.shape == (2, 32)
        torch.testing.assert_close(out, model.decode(p_mono.mean).mean(dim=1))
    mono_model = build("tiny").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            mono_model.decode_mono(mono_model.encode_mono(mono).mean)[:, None],
            mono_model.decode(mono_model.encode(mono[:, None]).mean),
        )


# --------------------------------------------------------------------------------------------
# Checkpoint import / export
# --------------------------------------------------------------------------------------------


def _full_model_layout(model: WaveVAE) -> dict[str, torch.Tensor]:
    """A Stable Audio Open style state dict: VAE under pretransform.model., plus unrelated DiT/conditioner keys."""
    state = {SAO_PREFIX + k: v.clone() for k, v in model.state_dict().items()}
    state["model.model.transformer.layers.0.self_attn.to_qkv.weight"] = torch.randn(6, 2)
    state["conditioner.conditioners.seconds_total.embedder.weight"] = torch.randn(3)
    return state


def test_full_model_ckpt_imports(tiny, tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": _full_model_layout(tiny), "global_step": 7}, path)
    loaded = load_wavevae(path, "tiny")
    assert not loaded.training
    audio = torch.randn(2, 1, 64)
    for a, b in zip(_outputs(tiny, audio), _outputs(loaded, audio), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_full_model_safetensors_imports(tiny, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(_full_model_layout(tiny), str(path))
    loaded = load_wavevae(path, SIZES["tiny"])
    audio = torch.randn(2, 1, 64)
    for a, b in zip(_outputs(tiny, audio), _outputs(loaded, audio), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_bare_state_dict_and_save_round_trip(tiny, tmp_path):
    bare = tmp_path / "vae.pt"
    torch.save(tiny.state_dict(), bare)
    saved = save_wavevae(tiny, tmp_path / "out" / "vae.safetensors")
    audio = torch.randn(1, 1, 32)
    for model in (load_wavevae(bare, "tiny"), load_wavevae(saved)):  # config read back from the metadata
        assert model.config == tiny.config
        for a, b in zip(_outputs(tiny, audio), _outputs(model, audio), strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    # The hash identifies the weights: saved again under another name after a load, they hash the same (nothing of
    # the path or the time is in the file); one changed value changes it.
    again = save_wavevae(load_wavevae(saved), tmp_path / "again" / "other_name.safetensors")
    assert len(weights_hash(saved)) == 16 and weights_hash(again) == weights_hash(saved)
    changed = load_wavevae(saved)
    with torch.no_grad():
        changed.decoder.layers[0].bias[0] += 1e-3
    assert weights_hash(save_wavevae(changed, tmp_path / "changed.safetensors")) != weights_hash(saved)
    assert weights_hash(saved) != weights_hash(bare)
    assert not list(saved.parent.glob("*.tmp"))


def test_missing_keys_are_named(tiny, tmp_path):
    state = _full_model_layout(tiny)
    del state[SAO_PREFIX + "decoder.layers.0.bias"]
    del state[SAO_PREFIX + "encoder.layers.1.layers.3.alpha"]
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ModelFileError, match="2 missing") as err:
        load_wavevae(path, "tiny")
    assert "encoder.layers.1.layers.3.alpha" in str(err.value) and "decoder.layers.0.bias" in str(err.value)
    assert str(path) in str(err.value)


def test_unexpected_keys_are_named(tiny, tmp_path):
    state = _full_model_layout(tiny)
    state[SAO_PREFIX + "decoder.layers.9.weight_g"] = torch.ones(1, 1, 1)
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelFileError, match=r"1 unexpected: decoder\.layers\.9\.weight_g"):
        load_wavevae(path, "tiny")


def test_wrong_shapes_are_named(tiny, tmp_path):
    path = tmp_path / "vae.pt"
    torch.save(tiny.state_dict(), path)
    with pytest.raises(
        ModelFileError, match=r"wrong shape: encoder\.layers\.0\.bias \(8,\) != \(16,\)"
    ) as err:
        load_wavevae(path, WaveVAEConfig(channels=16, c_mults=(1, 2), strides=(2, 4), latent_dim=4))
    assert "(+" in str(err.value)  # more mismatches than are listed


def test_sao_size_against_a_tiny_checkpoint_is_rejected(tiny, tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": _full_model_layout(tiny)}, path)
    with pytest.raises(ModelFileError, match="missing"):
        load_wavevae(path, "sao")


def test_text_file_is_rejected(tmp_path):
    for name in ("model.ckpt", "model.safetensors"):
        path = tmp_path / name
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
        with pytest.raises(ModelFileError, match="not a readable checkpoint") as err:
            load_wavevae(path, "tiny")
        assert str(path) in str(err.value)


def test_truncated_files_are_rejected(tiny, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": _full_model_layout(tiny)}, ckpt)
    assert zipfile.is_zipfile(ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    st = tmp_path / "model.safetensors"
    save_file(tiny.state_dict(), str(st))
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    for path in (ckpt, st):
        with pytest.raises(ModelFileError, match="not a readable checkpoint") as err:
            load_wavevae(path, "tiny")
        assert str(path) in str(err.value)


def test_non_state_dict_is_rejected(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {"a": 1}}, path)
    with pytest.raises(ModelFileError, match="not a state dict"):
        load_wavevae(path, "tiny")


def test_missing_file_says_what_belongs_there(tmp_path):
    path = tmp_path / "weights" / "model.ckpt"
    with pytest.raises(MissingModelFileError, match="Stable Audio Open 1.0 VAE") as err:
        load_wavevae(path, "sao")
    assert str(path) in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(ModelFileError, match="trained WaveVAE"):
        load_wavevae(path, "small", expected="the trained WaveVAE of the train_wavevae stage")


def test_a_load_runs_no_weight_initialisation(tiny, tmp_path, monkeypatch):
    """Initialising weight norm on the meta device cost ~1.5 s of every `vaflow generate` (torch imported its
    compiler for the meta kernels) for values the file then replaced."""
    saved = save_wavevae(tiny, tmp_path / "vae.safetensors")
    monkeypatch.setattr(WaveVAE, "initialize_weights", lambda self: pytest.fail("initialised for a load"))
    model = load_wavevae(saved)
    assert all(
        torch.equal(a, b)
        for a, b in zip(tiny.state_dict().values(), model.state_dict().values(), strict=True)
    )
