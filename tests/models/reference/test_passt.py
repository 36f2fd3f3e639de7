"""PaSST (av-benchmark): the official keys, the fixture's reference outputs under synthetic weights
(waveform → mel → logits / embedding), the 10 s fit, the official file layout, wrong files, a missing
package."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch

from tests.models.reference.fixtures import keys, reference, synth_state_dict
from vaflow.errors import UserError
from vaflow.models.artifacts import MissingModelFileError, ModelFileError
from vaflow.models.reference import MissingPackageError, load_strict
from vaflow.models.reference.passt import (
    CLIP_SAMPLES,
    CLIP_SECONDS,
    PROTOCOL,
    SAMPLE_RATE,
    PaSST,
    PaSSTFeatures,
    from_file,
)

TOL = 1e-4  # relative: max |a - b| / max |b|, the fixtures README's tolerance


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return ((a - b).abs().max() / b.abs().max()).item()


def cheap_checkpoint(spec: dict, value=lambda i: 0.0) -> dict[str, torch.Tensor]:
    """A state dict with `spec`'s keys and shapes whose tensors are one stored number each, broadcast
    (stride 0), so a full-size checkpoint saves and loads in kilobytes; tensor i holds `value(i)`."""
    return {
        k: torch.full((1,) * len(s["shape"]), value(i), dtype=getattr(torch, s["dtype"])).expand(s["shape"])
        for i, (k, s) in enumerate(spec.items())
    }


@pytest.fixture(scope="module")
def ref() -> dict:
    return reference("passt")


@pytest.fixture(scope="module")
def passt() -> PaSST:
    """The full-size PaSST (86 M) with the fixtures' synthetic weights, built and loaded once."""
    model = PaSST()
    load_strict(model.net, "<synthetic passt>", "PaSST", tensors=synth_state_dict("passt"))
    return model


# ---- the architecture --------------------------------------------------------------------------------------


def test_net_keys_are_the_official_checkpoint_keys(passt):
    official = keys("passt")["state_dict"]
    net = passt.net.state_dict()
    assert list(net) == list(official)
    assert {k: list(v.shape) for k, v in net.items()} == {k: s["shape"] for k, s in official.items()}
    # The evaluator adds no persistent state of its own (the mel window and filters are non-persistent).
    assert set(passt.state_dict()) == {f"net.{k}" for k in official}


def test_protocol_is_json_and_matches_the_front_end(passt):
    assert json.loads(json.dumps(PROTOCOL)) == PROTOCOL
    assert CLIP_SAMPLES == SAMPLE_RATE * CLIP_SECONDS == PROTOCOL["clip_samples"] == 320_000
    front = passt.mel_stft
    assert (front.sr, front.n_fft, front.hopsize, front.win_length, front.n_mels) == (
        32_000,
        1024,
        320,
        800,
        128,
    )
    assert (front.fmin, front.fmax) == (0.0, 15_000)  # fmax=None resolves to 15 kHz, as the protocol states
    assert "fmax=15000" in PROTOCOL["mel"]["mel_banks"]


def test_stays_in_eval_mode(passt):
    # In train mode the front end would mask/shift the mel at random and the net drop patches.
    passt.train()
    assert not any(m.training for m in passt.modules())


# ---- the reference outputs ---------------------------------------------------------------------------------


def test_mel_matches_reference(passt, ref):
    mel_10s = passt.mel(ref["wav_32k_10s"])
    assert mel_10s.shape == (2, 128, 1000)
    assert rel_err(mel_10s, ref["mel_10s"]) < TOL
    mel_1s = passt.mel(ref["wav_32k_1s"])
    assert mel_1s.shape == (2, 128, 100)
    assert rel_err(mel_1s, ref["mel_1s"]) < TOL


def test_features_10s_match_reference(passt, ref):
    out = passt.features(ref["wav_32k_10s"])
    assert isinstance(out, PaSSTFeatures)
    assert out.logits.shape == (2, 527) and out.embedding.shape == (2, 768)
    assert rel_err(out.logits, ref["logits_10s"]) < TOL
    assert rel_err(out.embedding, ref["embed_10s"]) < TOL
    assert rel_err(out.mode_all(), ref["out_all_10s"]) < TOL


def test_net_on_1s_mel_matches_reference(passt, ref):
    # The 1 s reference ran the package's wrapper on the unpadded clip: 100 frames, the time embedding cut
    # to 9 patches. (features() would pad it to 10 s, as av-benchmark does.)
    with torch.no_grad():
        out = passt(passt.mel(ref["wav_32k_1s"]))
    assert rel_err(out.logits, ref["logits_1s"]) < TOL
    assert rel_err(out.embedding, ref["embed_1s"]) < TOL
    assert rel_err(out.mode_all(), ref["out_all_1s"]) < TOL


def test_features_cut_longer_clips_to_10s(passt, ref):
    longer = torch.cat([ref["wav_32k_10s"][:1], torch.randn(1, SAMPLE_RATE // 2)], dim=1)  # 10.5 s
    out = passt.features(longer)
    assert rel_err(out.logits, ref["logits_10s"][:1]) < TOL
    assert rel_err(out.embedding, ref["embed_10s"][:1]) < TOL


class _Stop(Exception):
    pass


def test_features_zero_pad_shorter_clips_to_10s(passt, ref, monkeypatch):
    # What reaches the mel front end, caught there (the net's output for a fitted clip is checked above).
    seen = []

    def spy(wav):
        seen.append(wav.clone())
        raise _Stop

    monkeypatch.setattr(passt, "mel", spy)
    wav = ref["wav_32k_1s"]
    with pytest.raises(_Stop):
        passt.features(wav)
    assert seen[0].shape == (2, CLIP_SAMPLES)
    assert torch.equal(seen[0][:, : wav.shape[1]], wav)
    assert not seen[0][:, wav.shape[1] :].any()  # zeros after the clip, none before


def test_longest_mel_the_time_embedding_covers(passt):
    # 1005 frames = 99 time patches, what the embedding holds; an empty batch keeps this cheap.
    with torch.no_grad():
        out = passt(torch.zeros(0, 128, 1005))
    assert out.logits.shape == (0, 527) and out.embedding.shape == (0, 768)


@pytest.mark.parametrize(
    "call, shape, dtype",
    [
        ("features", (320_000,), torch.float32),  # no batch axis
        ("features", (2, 1, 32_000), torch.float32),  # a channel axis
        ("features", (2, 32_000), torch.int16),  # PCM, not float
        ("mel", (2, 100), torch.float32),  # too short for the STFT
        ("forward", (2, 64, 100), torch.float32),  # not 128 mels
        ("forward", (2, 128, 1006), torch.float32),  # longer than the time embedding
        ("forward", (2, 128, 15), torch.float32),  # shorter than one patch
    ],
)
def test_bad_input_is_a_value_error(passt, call, shape, dtype):
    with pytest.raises(ValueError, match="PaSST"):
        getattr(passt, call)(torch.zeros(shape, dtype=dtype))


# ---- quiet package -----------------------------------------------------------------------------------------


def test_building_and_running_print_and_warn_nothing(monkeypatch, capfd):
    import hear21passt.models.passt as passt_code

    monkeypatch.setattr(
        passt_code, "first_RUN", True
    )  # as in a fresh process: the first forward prints shapes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PaSST()
        with torch.no_grad():
            model(model.mel(torch.randn(1, SAMPLE_RATE // 2)))
    assert capfd.readouterr().out == ""
    assert [str(w.message) for w in caught] == []


def test_import_does_not_load_the_package():
    code = "import sys, vaflow.models.reference.passt; print('hear21passt' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


def test_missing_package_is_a_clear_user_error(monkeypatch):
    for name in [n for n in sys.modules if n.startswith("hear21passt.")] + ["hear21passt"]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: the import fails
    with pytest.raises(MissingPackageError) as err:
        PaSST()
    assert isinstance(err.value, UserError) and isinstance(err.value, ImportError)
    assert "PaSST" in str(err.value) and "pip install hear21passt==0.0.26" in str(err.value)


# ---- the official file -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["plain", "model"])
def test_from_file_loads_the_official_layout(tmp_path, layout):
    spec = keys("passt")["state_dict"]
    tensors = cheap_checkpoint(spec, value=lambda i: (i + 1) / 1000)
    path = tmp_path / "passt-s-f128-p16-s10-ap.476-swa.pt"
    torch.save(tensors if layout == "plain" else {"model": tensors}, path)
    model = from_file(path)
    assert isinstance(model, PaSST) and not any(m.training for m in model.modules())
    loaded = model.net.state_dict()
    for i, k in enumerate(spec):
        assert torch.all(loaded[k] == (i + 1) / 1000), k


def _wrong_files() -> dict[str, dict[str, torch.Tensor]]:
    spec = keys("passt")["state_dict"]
    good = cheap_checkpoint(spec)
    missing = {k: v for k, v in good.items() if k != "blocks.5.attn.qkv.bias"}
    wrong_shape = {**good, "head.1.weight": torch.zeros(1000, 768)}
    wrapper = {"device_proxy": torch.zeros(1), **{f"net.{k}": v for k, v in good.items()}}
    other = cheap_checkpoint(keys("melception")["state_dict"])
    return {
        "missing key": (missing, "blocks.5.attn.qkv.bias"),
        "wrong shape": (wrong_shape, "head.1.weight"),
        "wrapper state dict": (wrapper, "device_proxy"),
        "another model": (other, "cls_token"),
    }


@pytest.mark.parametrize("case", ["missing key", "wrong shape", "wrapper state dict", "another model"])
def test_wrong_file_is_a_model_file_error(tmp_path, case):
    tensors, key = _wrong_files()[case]
    path = tmp_path / "wrong.pt"
    torch.save(tensors, path)
    with pytest.raises(ModelFileError, match="PaSST") as err:
        from_file(path)
    assert key in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(MissingModelFileError, match="PaSST"):
        from_file(tmp_path / "passt-s-f128-p16-s10-ap.476-swa.pt")
