"""PANNs Cnn14 at 16 kHz (av-benchmark FD/KL/IS_PANNs). No fixture holds its reference outputs, so the network is
checked against the `panns-inference` package's own Cnn14 (same 16 kHz settings as av-benchmark) under the
fixtures' synthetic weights, and its front end against torchlibrosa's and against a closed form; then the 8 s cut,
the official file layout (a training checkpoint with numpy arrays beside 'model'), wrong files and bad input.

The package comparisons need panns-inference, torchlibrosa and librosa (pinned in requirements.lock for the tests;
the module itself needs none of them)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import types

import numpy as np
import pytest
import torch
import torchaudio

from tests.models.reference.fixtures import FIXTURES, keys
from vaflow.models.artifacts import MissingModelFileError, ModelFileError
from vaflow.models.reference.panns import (
    CLIP_SAMPLES,
    CLIP_SECONDS,
    MIN_SAMPLES,
    PROTOCOL,
    SAMPLE_RATE,
    Cnn14,
    LogmelFilterBank,
    PANNsFeatures,
    Spectrogram,
    from_file,
)

TOL = 1e-4  # relative: max |a - b| / max |b|, the fixtures README's tolerance
# av-benchmark's construction of the network (extraction_models.py)
SETTINGS = dict(
    sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000, classes_num=527
)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return ((a - b).abs().max() / b.abs().max()).item()


def spec_of(model: torch.nn.Module) -> dict[str, dict]:
    """{key: {shape, dtype}} of a model's state dict, the form the fixtures' key files use."""
    return {
        k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
        for k, v in model.state_dict().items()
    }


def synth_weights(spec: dict[str, dict]) -> dict[str, torch.Tensor]:
    """The fixtures' deterministic synthetic weights (`synth_weights.py`) for `spec`'s keys and shapes."""
    loader = importlib.util.spec_from_file_location("synth_weights", FIXTURES / "synth_weights.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module.synth_state_dict(spec)


def cheap_checkpoint(spec: dict, value=lambda i: 0.0) -> dict[str, torch.Tensor]:
    """`spec`'s keys and shapes, each tensor one stored number broadcast (stride 0), so a full-size checkpoint
    saves and loads in kilobytes; float tensor i holds `value(i)`, integer ones 0."""
    out = {}
    for i, (k, s) in enumerate(spec.items()):
        dtype = getattr(torch, s["dtype"])
        fill = value(i) if dtype.is_floating_point else 0  # BatchNorm's num_batches_tracked: int64 zeros
        out[k] = torch.full((1,) * len(s["shape"]), fill, dtype=dtype).expand(s["shape"])
    return out


def official_spec() -> dict[str, dict]:
    with torch.device("meta"):
        return spec_of(Cnn14())


def package_models() -> types.ModuleType:
    """`panns_inference.models` (the package's Cnn14), imported without the package's __init__: that one runs
    `wget` into ~/panns_data at import time to fetch AudioSet's label list."""
    found = importlib.util.find_spec("panns_inference")
    assert found is not None, "panns-inference is not installed: pip install -r requirements.lock"
    stub = types.ModuleType("panns_inference")
    stub.__path__ = list(found.submodule_search_locations)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "panns_inference", stub)
        models = importlib.import_module("panns_inference.models")
        for name in ("panns_inference.models", "panns_inference.pytorch_utils"):
            sys.modules.pop(name, None)
    return models


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    """The synthetic weights of the full-size Cnn14 (81 M floats; building them takes most of this file's time)."""
    return synth_weights(official_spec())


@pytest.fixture(scope="module")
def cnn14(weights) -> Cnn14:
    with torch.device("meta"):
        model = Cnn14()
    model.load_state_dict(weights, strict=True, assign=True)  # shares the tensors with `package`
    return model.eval()


@pytest.fixture(scope="module")
def package(request) -> torch.nn.Module:
    """The package's Cnn14 at av-benchmark's settings, with the same synthetic weights, in eval mode."""
    model = package_models().Cnn14(**SETTINGS)
    model.load_state_dict(request.getfixturevalue("weights"), strict=True, assign=True)
    return model.eval()


def run_package(package: torch.nn.Module, wav: torch.Tensor) -> dict[str, torch.Tensor]:
    """The package's forward, plus the pre-sigmoid logits av-benchmark keeps (its Cnn14 returns fc_audioset's
    output as 'logits'; the package's returns only the sigmoid), caught at fc_audioset."""
    caught = {}
    hook = package.fc_audioset.register_forward_hook(lambda module, args, out: caught.update(logits=out))
    try:
        with torch.inference_mode():
            out = package(wav)
    finally:
        hook.remove()
    return {**out, "logits": caught["logits"]}


def noisy_tones(batch: int, n: int, seed: int) -> torch.Tensor:
    """A tone per clip plus white noise, (batch, n) at 16 kHz: energy in every mel band."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / SAMPLE_RATE
    freqs = 220.0 * (1 + torch.arange(batch))[:, None]
    return 0.3 * torch.sin(2 * torch.pi * freqs * t) + 0.05 * torch.randn(batch, n, generator=g)


# ---- the architecture ----------------------------------------------------------------------------------------


def test_keys_are_the_package_and_checkpoint_keys(package):
    # The package's state dict is the official file's 'model' (audioset_tagging_cnn saves model.state_dict()).
    ours = official_spec()
    theirs = spec_of(package)
    assert list(ours) == list(theirs)
    assert ours == theirs
    assert ours["spectrogram_extractor.stft.conv_real.weight"]["shape"] == [257, 1, 512]
    assert ours["logmel_extractor.melW"]["shape"] == [257, 64]
    assert ours["fc_audioset.weight"]["shape"] == [527, 2048]


def test_protocol_is_json_and_names_the_layers():
    assert json.loads(json.dumps(PROTOCOL)) == PROTOCOL
    assert CLIP_SAMPLES == SAMPLE_RATE * CLIP_SECONDS == PROTOCOL["clip_samples"] == 128_000
    assert PROTOCOL["sample_rate"] == SETTINGS["sample_rate"]
    assert (PROTOCOL["stft"]["n_fft"], PROTOCOL["stft"]["hop"]) == (
        SETTINGS["window_size"],
        SETTINGS["hop_size"],
    )
    assert (PROTOCOL["mel"]["n_mels"], PROTOCOL["mel"]["f_min"], PROTOCOL["mel"]["f_max"]) == (64, 50, 8000)
    assert "'2048'" in PROTOCOL["layers"]["fd"] and "before the sigmoid" in PROTOCOL["layers"]["kl"]


def test_stays_in_eval_mode():
    # In train mode the BatchNorms would normalise with batch statistics instead of the checkpoint's.
    with torch.device("meta"):
        model = Cnn14()
    assert not any(m.training for m in model.modules())
    model.train()
    assert not any(m.training for m in model.modules())


# ---- against the package -------------------------------------------------------------------------------------


def test_features_match_the_package_on_the_first_8s(package, cnn14):
    # A 9 s batch: features() keeps its first 8 s, as av-benchmark's AudioDataset does, and matches the
    # package's forward on that cut.
    wav = noisy_tones(2, 9 * SAMPLE_RATE, seed=0)
    out = cnn14.features(wav)
    want = run_package(package, wav[:, :CLIP_SAMPLES])
    assert isinstance(out, PANNsFeatures)
    assert out.embedding.shape == (2, 2048) and out.logits.shape == (2, 527)
    assert rel_err(out.embedding, want["embedding"]) < TOL
    assert rel_err(out.logits, want["logits"]) < TOL
    assert rel_err(torch.sigmoid(out.logits), want["clipwise_output"]) < TOL
    # Not a trivial agreement: varied, clip-dependent outputs
    assert (out.embedding > 0).float().mean() > 0.1 and out.logits.std() > 1
    assert rel_err(out.embedding[0], out.embedding[1]) > 0.01


def test_shorter_clips_are_scored_unpadded(package, cnn14):
    # av-benchmark only cuts; a 3 s clip reaches the network as it is (zero padding would change the pooled mean).
    wav = noisy_tones(1, 3 * SAMPLE_RATE, seed=1)
    out = cnn14.features(wav)
    want = run_package(package, wav)
    assert rel_err(out.embedding, want["embedding"]) < TOL
    assert rel_err(out.logits, want["logits"]) < TOL
    padded = run_package(package, torch.nn.functional.pad(wav, (0, SAMPLE_RATE)))  # 1 s of zeros more
    assert rel_err(out.embedding, padded["embedding"]) > 0.01


def test_shortest_clip_the_pools_allow(package, cnn14):
    wav = noisy_tones(1, MIN_SAMPLES, seed=2)
    assert rel_err(cnn14.features(wav).logits, run_package(package, wav)["logits"]) < TOL
    with pytest.raises(RuntimeError):  # one sample less: the package's fifth pool has nothing left to pool
        run_package(package, wav[:, :-1])
    with pytest.raises(ValueError, match=f"at least {MIN_SAMPLES}"):
        cnn14.features(wav[:, :-1])


def test_front_end_matches_torchlibrosa():
    # With the real kernels torchlibrosa builds (librosa's Hann window and slaney mel matrix), not synthetic ones.
    stft = importlib.import_module("torchlibrosa.stft")
    spec = stft.Spectrogram(
        n_fft=512, hop_length=160, win_length=512, window="hann", center=True, pad_mode="reflect"
    )
    logmel = stft.LogmelFilterBank(
        sr=16000, n_fft=512, n_mels=64, fmin=50, fmax=8000, ref=1.0, amin=1e-10, top_db=None
    )
    ours_spec, ours_logmel = Spectrogram(), LogmelFilterBank()
    ours_spec.load_state_dict(spec.state_dict(), strict=True)
    ours_logmel.load_state_dict(logmel.state_dict(), strict=True)
    wav = noisy_tones(2, 2 * SAMPLE_RATE, seed=3)
    with torch.no_grad():
        assert rel_err(ours_spec(wav), spec(wav)) < TOL
        assert rel_err(ours_logmel(ours_spec(wav)), logmel(spec(wav))) < TOL
    # ... and those kernels are what PROTOCOL says: a periodic Hann DFT and the slaney mel matrix
    real, imag = dft_kernels()
    assert (
        rel_err(spec.stft.conv_real.weight, real) < 1e-5 and rel_err(spec.stft.conv_imag.weight, imag) < 1e-5
    )
    assert rel_err(logmel.melW, slaney_mel()) < 1e-5


# ---- the front end in closed form (no package needed) --------------------------------------------------------


def dft_kernels() -> tuple[torch.Tensor, torch.Tensor]:
    """The periodic-Hann-windowed DFT as torchlibrosa's conv kernels, (257, 1, 512) real and imaginary parts."""
    n = torch.arange(512, dtype=torch.float64)
    k = torch.arange(257, dtype=torch.float64)[:, None]
    window = torch.hann_window(512, periodic=True, dtype=torch.float64)
    angle = 2 * torch.pi * k * n / 512
    return (window * torch.cos(angle)).float()[:, None], (-window * torch.sin(angle)).float()[:, None]


def slaney_mel() -> torch.Tensor:
    """librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=50, fmax=8000).T, (257, 64)."""
    return torchaudio.functional.melscale_fbanks(
        257, 50.0, 8000.0, 64, 16000, norm="slaney", mel_scale="slaney"
    )


def test_front_end_is_the_power_stft_in_decibels():
    real, imag = dft_kernels()
    spectrogram, logmel = Spectrogram(), LogmelFilterBank()
    spectrogram.load_state_dict({"stft.conv_real.weight": real, "stft.conv_imag.weight": imag})
    logmel.load_state_dict({"melW": slaney_mel()})
    wav = noisy_tones(2, SAMPLE_RATE, seed=4)
    with torch.no_grad():
        power = spectrogram(wav)
        db = logmel(power)
    # centred frames with reflect padding: N // hop + 1 of them
    assert power.shape == (2, 1, SAMPLE_RATE // 160 + 1, 257) and db.shape == (2, 1, 101, 64)
    window = torch.hann_window(512, periodic=True)
    want = torch.stft(wav, 512, 160, window=window, center=True, pad_mode="reflect", return_complex=True)
    want = want.abs().square().transpose(1, 2)[:, None]  # (2, 1, 101, 257)
    assert rel_err(power, want) < TOL
    want_db = 10 * torch.log10((want @ slaney_mel()).clamp(min=1e-10))
    assert (db - want_db).abs().max() < 1e-3  # dB


# ---- the official file ---------------------------------------------------------------------------------------


def training_checkpoint(tensors: dict) -> dict:
    """audioset_tagging_cnn's checkpoint layout: {'iteration', 'model', 'sampler'}, the balanced sampler's state
    holding numpy index arrays per class."""
    sampler = {
        "indexes_per_class": [np.arange(k, 40 + k, dtype=np.int64) for k in range(527)],
        "queue": [3, 1, 4],
        "pointers_of_classes": [np.int64(5)] * 527,
    }
    return {"iteration": 540000, "model": tensors, "sampler": sampler}


@pytest.mark.parametrize("form", ["zip", "legacy, numpy 1"])
def test_from_file_loads_the_official_layout(tmp_path, form):
    spec = official_spec()
    path = tmp_path / "Cnn14_16k_mAP=0.438.pth"
    checkpoint = training_checkpoint(cheap_checkpoint(spec, value=lambda i: (i + 1) / 1000))
    if form == "zip":
        torch.save(checkpoint, path)
    else:  # a 2020 file: the pre-1.6 pickle format, numpy 1's module names
        torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
        raw = path.read_bytes()
        assert raw.count(b"numpy._core.multiarray") > 0
        path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    model = from_file(path)
    assert isinstance(model, Cnn14) and not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    loaded = model.state_dict()
    for i, k in enumerate(spec):
        want = (i + 1) / 1000 if loaded[k].is_floating_point() else 0
        assert torch.all(loaded[k] == want), k


def test_from_file_allows_no_other_pickled_object(tmp_path):
    # Only numpy's array rebuilding is allowed beyond tensors; anything else is refused unread.
    path = tmp_path / "Cnn14_16k_mAP=0.438.pth"
    checkpoint = training_checkpoint(cheap_checkpoint(official_spec()))
    torch.save({**checkpoint, "args": argparse.Namespace(lr=1e-3)}, path)
    with pytest.raises(ModelFileError, match="PANNs Cnn14 16 kHz") as err:
        from_file(path)
    assert "not a readable checkpoint" in str(err.value) and "Namespace" in str(err.value)


def _wrong_files() -> dict[str, tuple[dict[str, torch.Tensor], str]]:
    spec = official_spec()
    good = cheap_checkpoint(spec)
    missing = {k: v for k, v in good.items() if k != "fc_audioset.bias"}
    # Cnn14_mAP=0.431.pth, the 32 kHz model: the same keys, a 1024-point STFT and its mel matrix
    at_32k = {
        **good,
        "spectrogram_extractor.stft.conv_real.weight": torch.zeros(513, 1, 1024),
        "spectrogram_extractor.stft.conv_imag.weight": torch.zeros(513, 1, 1024),
        "logmel_extractor.melW": torch.zeros(513, 64),
    }
    other = cheap_checkpoint(keys("passt")["state_dict"])
    return {
        "missing key": (missing, "fc_audioset.bias"),
        "32 kHz Cnn14": (at_32k, "spectrogram_extractor.stft.conv_real.weight"),
        "another model": (other, "spectrogram_extractor.stft.conv_real.weight"),  # the first key missing
    }


@pytest.mark.parametrize("case", ["missing key", "32 kHz Cnn14", "another model"])
def test_wrong_file_is_a_model_file_error(tmp_path, case):
    tensors, key = _wrong_files()[case]
    path = tmp_path / "wrong.pth"
    torch.save(training_checkpoint(tensors), path)
    with pytest.raises(ModelFileError, match="PANNs Cnn14 16 kHz") as err:
        from_file(path)
    assert key in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(MissingModelFileError, match="PANNs Cnn14 16 kHz"):
        from_file(tmp_path / "Cnn14_16k_mAP=0.438.pth")


# ---- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, dtype",
    [
        ((CLIP_SAMPLES,), torch.float32),  # no batch axis
        ((2, 1, CLIP_SAMPLES), torch.float32),  # a channel axis
        ((2, CLIP_SAMPLES), torch.int16),  # PCM, not float
        ((2, MIN_SAMPLES - 1), torch.float32),  # too short for five pools
    ],
)
def test_bad_input_is_a_value_error(shape, dtype):
    with torch.device("meta"):
        model = Cnn14()  # the checks come before any weight is used
    with pytest.raises(ValueError, match="PANNs"):
        model.features(torch.zeros(shape, dtype=dtype))
