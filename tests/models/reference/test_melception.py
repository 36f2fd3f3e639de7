"""Melception (SpecVQGAN): official keys, the reference outputs under synthetic weights, the waveform -> mel recipe
step by step, the shipped normalisation table, and loading the official checkpoint layout strictly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio

from tests.models.reference.fixtures import FIXTURES, keys, reference, synth_state_dict
from vaflow.models.artifacts import MissingModelFileError, ModelFileError
from vaflow.models.reference import melception as M

REL = 1e-4  # the fixtures README's tolerance: max abs diff over max abs value


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


@pytest.fixture(scope="module")
def ref() -> dict:
    return reference("melception")


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return synth_state_dict("melception")


@pytest.fixture(scope="module")
def model(weights) -> M.Melception:
    net = M.Melception()
    net.load_state_dict(weights, strict=True)
    return net.eval()


# ----------------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------------


def test_state_dict_is_the_official_checkpoints():
    official = keys("melception")["state_dict"]
    ours = M.Melception().state_dict()
    assert list(ours) == list(official)
    assert {k: list(v.shape) for k, v in ours.items()} == {k: v["shape"] for k, v in official.items()}


def test_reference_outputs_from_normalised_mel(model, ref):
    with torch.inference_mode():
        out = model(ref["input_mel_norm"])  # (2, 80, 848)
    assert out.embedding.shape == (2, 2048) and out.logits.shape == out.logits_unbiased.shape == (2, 309)
    assert rel_err(out.embedding, ref["feat_2048"]) < REL
    assert rel_err(out.logits, ref["logits"]) < REL
    assert rel_err(out.logits_unbiased, ref["logits_unbiased"]) < REL


def test_network_rejects_other_mel_shapes(model):
    with pytest.raises(ValueError, match=r"\(B, 80, T\).*\(1, 128, 848\)"):
        model(torch.zeros(1, 128, 848))


# ----------------------------------------------------------------------------------------------------------------
# The input pipeline
# ----------------------------------------------------------------------------------------------------------------


def test_mel_basis_is_torchaudios_slaney_filterbank():
    # torchaudio builds the same matrix in float32; ours holds librosa's float32 values (bit-exact, checked against
    # librosa 0.11 when written), so the two agree to float32 rounding only.
    ta = torchaudio.functional.melscale_fbanks(
        513, 125.0, 7600.0, 80, 22050, norm="slaney", mel_scale="slaney"
    ).T.double()
    basis = M._mel_basis()
    assert basis.shape == (80, 513)
    assert (basis - ta).abs().max() < 2e-7
    assert (basis.float().double() == basis).all()  # float32 values, as librosa's default dtype


def test_mel_01_reproduces_specvqgan_transforms(ref):
    wp = ref["wav_pipeline"]
    got = M.mel_01(wp["wav_float64"][None])  # (1, 80, 860)
    assert got.shape == (1, 80, 860) and got.dtype == torch.float64
    assert (got[0].float() - wp["mel_01_80x860"]).abs().max() < 1e-6


def test_mel_reproduces_normalised_crop(ref):
    wp = ref["wav_pipeline"]
    got = M.mel(wp["wav_float64"][None])  # (1, 80, 848)
    assert got.shape == (1, 80, 848) and got.dtype == torch.float32
    assert (got[0] - wp["mel_norm_80x848"]).abs().max() < 1e-6
    # from the float32 waveform the toolkit would read: only the waveform's float32 rounding differs
    assert (M.mel(wp["wav_float64"][None].float())[0] - wp["mel_norm_80x848"]).abs().max() < 1e-4


def test_features_from_waveform(model, ref):
    wp = ref["wav_pipeline"]
    out = model.features(wp["wav_float64"][None].float())
    assert rel_err(out.embedding, wp["feat_2048"]) < REL
    assert rel_err(out.logits, wp["logits"]) < REL
    assert rel_err(out.logits_unbiased, wp["logits_unbiased"]) < REL


def test_waveform_is_fit_to_10_seconds():
    g = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(2, 230000, generator=g, dtype=torch.float64)
    short = wav[:, :22050]
    padded = torch.cat([short, torch.zeros(2, 220500 - 22050, dtype=torch.float64)], 1)
    assert torch.equal(M.mel_01(short), M.mel_01(padded))  # zero-padded at the end
    assert torch.equal(M.mel_01(wav), M.mel_01(wav[:, :220500]))  # cut to the first 10 s
    assert not torch.equal(M.mel_01(wav), M.mel_01(wav[:, 10000:230000]))


def test_means_stds_shipped_equal_the_fixtures_table():
    want = torch.from_numpy(np.loadtxt(FIXTURES / "melception_train_means_stds_melspec_10s_22050hz.txt"))
    got = M.means_stds()
    assert got.shape == (80, 2) and got.dtype == torch.float64
    assert torch.equal(got, want)


@pytest.mark.parametrize(
    "wav",
    [
        torch.zeros(220500),
        torch.zeros(1, 1, 220500),
        torch.zeros(1, 0),
        torch.zeros(1, 10, dtype=torch.int16),
    ],
)
def test_bad_waveforms_are_named(wav):
    with pytest.raises(ValueError, match=r"\(B, N\) at 22050 Hz"):
        M.mel(wav)


# ----------------------------------------------------------------------------------------------------------------
# Loading the official checkpoint layout
# ----------------------------------------------------------------------------------------------------------------


def save_official(path, state_dict) -> None:
    """A file in melception-21-05-10T09-28-40.pt's layout: training state beside the weights under "model"."""
    optimizer = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4), "exp_avg_sq": torch.ones(4)}},
        "param_groups": [{"lr": 3e-4, "betas": (0.9, 0.999), "weight_decay": 0, "params": [0]}],
    }
    torch.save(
        {
            "loss": torch.tensor(1.25),
            "metrics": {"accuracy": 0.5},
            "epoch": 7,
            "optimizer": optimizer,
            "model": state_dict,
        },
        path,
    )


def test_from_file_loads_the_official_layout(tmp_path, weights):
    path = tmp_path / "melception-21-05-10T09-28-40.pt"
    save_official(path, weights)
    net = M.from_file(path)
    assert not net.training
    loaded = net.state_dict()
    # every tensor, BatchNorm running stats included
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())


def _broken(weights, how):
    if how == "other model":
        return {k: torch.zeros(2) for k in list(keys("passt")["state_dict"])[:4]}
    if how == "missing key":
        return {k: v for k, v in weights.items() if k != "fc.bias"}
    return {**weights, "fc.weight": torch.zeros(1000, 2048)}  # ImageNet's 1000 classes, not VGGSound's 309


@pytest.mark.parametrize(
    ("how", "key"),
    [("other model", "Conv2d_1a_3x3"), ("missing key", "fc.bias"), ("wrong shape", "fc.weight")],
)
def test_wrong_files_name_the_evaluator_and_a_key(tmp_path, weights, how, key):
    path = tmp_path / "wrong.pt"
    save_official(path, _broken(weights, how))
    with pytest.raises(ModelFileError, match="Melception") as err:
        M.from_file(path)
    assert key in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(MissingModelFileError, match="Melception"):
        M.from_file(tmp_path / "melception-21-05-10T09-28-40.pt")
