"""ImageBind (IB-VA): the huge checkpoint's keys and shapes, the tiny fixture model's embeddings from its inputs and
from waveform / frames, the clip timepoints rule, the IB score, and loading the official layout strictly."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from tests.models.reference.fixtures import FIXTURES, keys, reference, synth_state_dict
from vaflow.models.artifacts import MissingModelFileError, ModelFileError
from vaflow.models.reference import imagebind as IB

REL = 1e-4  # the fixtures README's tolerance: max abs diff over max abs value
TINY_FILE = FIXTURES / "imagebind_tiny_state_dict.pt"  # the full tiny state dict, official layout


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


@pytest.fixture(scope="module")
def ref() -> dict:
    return reference("imagebind_tiny")


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    return torch.load(TINY_FILE, weights_only=True)


@pytest.fixture(scope="module")
def model() -> IB.ImageBind:
    return IB.from_file(TINY_FILE, IB.TINY)


# ----------------------------------------------------------------------------------------------------------------
# Keys and configs
# ----------------------------------------------------------------------------------------------------------------


def test_huge_state_dict_is_the_official_checkpoints():
    with torch.device("meta"):  # the real build is 2.9 GB
        net = IB.ImageBind(IB.HUGE)
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    others = {k: list(s) for k, s in IB.other_modality_shapes(IB.HUGE).items()}
    assert not set(ours) & set(others)
    official = {k: v["shape"] for k, v in keys("imagebind_huge")["state_dict"].items()}
    assert {**ours, **others} == official
    # only vision and audio are built; every other key is one of the dropped modalities'
    assert all(k.split(".")[1] in ("vision", "audio") for k in ours)
    assert all(k.startswith(IB.OTHER_PREFIXES) for k in others)
    assert sum(v.numel() for v in net.state_dict().values()) == 719_065_089


def test_tiny_config_is_the_fixtures():
    config = keys("imagebind_tiny")["config"]
    assert IB.ImageBindConfig.from_dict(config) == IB.TINY
    assert IB.TINY.to_dict() == {**IB.TINY.to_dict(), **config}  # every fixture argument, same values
    assert IB.CONFIGS["imagebind_tiny"] is IB.TINY and IB.HUGE.vision_grid == (1, 16, 16)
    assert IB.HUGE.audio_grid == (12, 19)


def test_tiny_state_dict_is_synth_weights_plus_constructor_buffers(tiny_sd):
    synth = synth_state_dict("imagebind_tiny")
    kept = set(keys("imagebind_tiny")["kept_buffers_from_constructor"])
    assert set(synth) == set(tiny_sd)
    assert all(torch.equal(synth[k], tiny_sd[k]) for k in synth if k not in kept)
    # our constructor gives the audio tower's kept buffer the same value (log 20) the file holds
    ours = IB.ImageBind(IB.TINY).state_dict()["modality_postprocessors.audio.1.log_logit_scale"]
    assert torch.equal(ours, tiny_sd["modality_postprocessors.audio.1.log_logit_scale"])


# ----------------------------------------------------------------------------------------------------------------
# Embeddings from the reference inputs
# ----------------------------------------------------------------------------------------------------------------


def test_audio_embedding_from_reference_input(model, ref):
    with torch.inference_mode():
        clips = model(ref["audio_input"], "audio")  # (1, 3, 16)
    assert clips.shape == (1, 3, 16)
    assert rel_err(clips.mean(1), ref["audio_emb"]) < REL
    assert rel_err(clips[:, 0], ref["audio_emb_first_clip_only"]) < REL
    assert torch.allclose(clips.norm(dim=-1), torch.full((1, 3), 20.0))  # normalised, then the fixed x20


def test_vision_embedding_from_reference_input(model, ref):
    with torch.inference_mode():
        clips = model(ref["vision_input"], "vision")  # (1, 9, 16)
    assert clips.shape == (1, 9, 16)
    assert rel_err(clips.mean(1), ref["vision_emb"]) < REL
    assert torch.allclose(clips.norm(dim=-1), torch.ones(1, 9))


def test_network_rejects_other_clip_shapes(model):
    with pytest.raises(ValueError, match=r"ImageBind audio: expected clips \(B, S, 1, 128, 204\)"):
        model(torch.zeros(1, 3, 1, 128, 200), "audio")
    with pytest.raises(ValueError, match="ImageBind vision"):
        model(torch.zeros(1, 9, 3, 224, 224), "vision")  # frames not paired


def test_ib_score(ref):
    score = IB.ib_score(ref["vision_emb"], ref["audio_emb"])
    assert score.shape == (1,)
    assert rel_err(score, ref["ib_score"]) < 1e-6
    # cosine: invariant to either side's scale, 1 for a vector with itself, -1 against its negation
    v = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(IB.ib_score(v, 20 * v), torch.ones(2))
    torch.testing.assert_close(IB.ib_score(v, -v), -torch.ones(2))
    assert IB.PROTOCOL["ib_score_report_scale"] == 100


# ----------------------------------------------------------------------------------------------------------------
# Waveform -> audio input, frames -> vision input, end to end
# ----------------------------------------------------------------------------------------------------------------


def test_audio_clip_timepoints(ref):
    assert torch.equal(IB.audio_clip_timepoints(ref["wav_16k_8s"].shape[1]), ref["audio_clip_timepoints"])
    # starts k * max(d - 2, 0) / 3: overlapping under 8 s, all at 0 under 2 s
    assert IB.audio_clip_timepoints(5 * 16000).tolist() == [[0, 2], [1, 3], [2, 4]]
    assert IB.audio_clip_timepoints(16000).tolist() == [[0, 2]] * 3
    ten = IB.audio_clip_timepoints(10 * 16000)
    torch.testing.assert_close(ten[:, 0], torch.tensor([0, 8 / 3, 16 / 3], dtype=torch.float64))
    assert IB._clip_starts(10 * 16000)[1] == Fraction(8, 3)


def test_audio_input_from_waveform(ref):
    x = IB.audio_input(ref["wav_16k_8s"])
    assert x.shape == (1, 3, 1, 128, 204)
    # float32 FFT rounding differs only in near-silent mel bins (log energy < -10); 1.2e-4 measured
    assert rel_err(x, ref["audio_input"]) < 2e-4
    log_energy = ref["audio_input"] * 9.138 - 4.268
    assert (log_energy[(x - ref["audio_input"]).abs() > 1e-5] < -10).all()
    # 2 s give 198 fbank frames; the 6 padded ones are zeros before the normalisation
    torch.testing.assert_close(x[..., 198:], torch.full_like(x[..., 198:], 4.268 / 9.138))


def test_audio_input_batch_is_rows_one_by_one(ref):
    wav = ref["wav_16k_8s"]
    # the caller's waveform is left untouched although clips are mean-shifted in place
    both = torch.cat([wav, wav.flip(-1)])
    before = both.clone()
    x = IB.audio_input(both)
    assert torch.equal(both, before)
    assert torch.equal(x[1:], IB.audio_input(wav.flip(-1)))


def test_audio_overlapping_clips_see_earlier_clips_mean_removed():
    """Upstream removes each clip's mean in place on the waveform, so for a 5 s input (clips at 0, 1, 2 s) the
    second clip reads samples 1-2 s already shifted by the first clip's mean."""
    wav = torch.zeros(1, 5 * 16000)
    wav[:, :16000] = 1.0  # clip 0 ([0, 2) s) has mean 0.5; samples [1, 2) s are 0 before, -0.5 after
    x = IB.audio_input(wav)
    shifted = wav.clone()
    shifted[:, :32000] -= 0.5
    fresh = IB.audio_input(shifted[:, 16000:])  # clip 1 of the shifted waveform is its 0-2 s clip
    torch.testing.assert_close(x[:, 1], fresh[:, 0])
    assert not torch.allclose(x[:, 1], IB.audio_input(wav[:, 16000:])[:, 0])


def test_vision_input_from_frames(ref):
    frames = ref["frames_uint8_TCHW"]  # (4, 3, 180, 320)
    x = IB.vision_input(frames)
    assert x.shape == (1, 9, 3, 2, 224, 224)
    assert rel_err(x, ref["vision_input"]) < REL
    batched = IB.vision_input(torch.stack([frames, frames.flip(0)]))  # (2, T, 3, H, W)
    assert torch.equal(batched[:1], x)
    # clip 0 of a pair-major layout is crop 0 (left) of frames 0-1; the next video reverses time
    torch.testing.assert_close(batched[1, 0], x[0, 6].flip(1))


def test_vision_crops_follow_the_long_side():
    tall = torch.randint(0, 256, (2, 3, 400, 224), dtype=torch.uint8)  # already 224 on the short side
    x = IB.vision_input(tall)  # (1, 3, 3, 2, 224, 224)
    mean = torch.tensor(IB.CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(IB.CLIP_STD).view(3, 1, 1)
    pixels = (tall[0].float() / 255 - mean) / std  # (3, 400, 224)
    for crop, top in enumerate((0, 88, 176)):
        torch.testing.assert_close(x[0, crop, :, 0], pixels[:, top : top + 224])


def test_features_end_to_end(model, ref):
    audio = IB.audio_features(model, ref["wav_16k_8s"])
    video = IB.vision_features(model, ref["frames_uint8_TCHW"])
    assert audio.clips.shape == (1, 3, 16) and video.clips.shape == (1, 9, 16)
    assert rel_err(audio.embedding, ref["audio_emb"]) < REL
    assert rel_err(video.embedding, ref["vision_emb"]) < REL
    assert rel_err(IB.ib_score(video.embedding, audio.embedding), ref["ib_score"]) < REL


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(16000),
        torch.zeros(1, 1, 16000),
        torch.zeros(1, 399),
        torch.zeros(1, 16000, dtype=torch.int16),
    ],
)
def test_audio_rejects_bad_waveforms(bad):
    with pytest.raises(ValueError, match="ImageBind audio"):
        IB.audio_input(bad)


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(4, 3, 180, 320),  # float, not uint8
        torch.zeros(1, 3, 180, 320, dtype=torch.uint8),  # one frame: no pair
        torch.zeros(4, 1, 180, 320, dtype=torch.uint8),  # not RGB
        torch.zeros(3, 180, 320, dtype=torch.uint8),
    ],
)
def test_vision_rejects_bad_frames(bad):
    with pytest.raises(ValueError, match="ImageBind vision"):
        IB.vision_input(bad)


# ----------------------------------------------------------------------------------------------------------------
# Loading the official layout
# ----------------------------------------------------------------------------------------------------------------


def test_from_file_loads_every_vision_and_audio_tensor(model, tiny_sd):
    ours = model.state_dict()
    assert ours and all(torch.equal(v, tiny_sd[k]) for k, v in ours.items())
    assert not model.training


def test_from_file_synthetic_checkpoint(tmp_path, tiny_sd, ref):
    path = tmp_path / "imagebind_huge.pth"
    torch.save(dict(tiny_sd), path)  # plain state dict, no prefix
    net = IB.from_file(path, IB.TINY)
    with torch.inference_mode():
        assert rel_err(net(ref["vision_input"], "vision").mean(1), ref["vision_emb"]) < REL


@pytest.mark.parametrize(
    "change, key",
    [
        ("drop", "modality_trunks.vision.blocks.1.mlp.fc2.bias"),
        ("drop", "modality_heads.text.proj.1.weight"),  # a modality not built is still checked
        ("shape", "modality_preprocessors.audio.pos_embedding_helper.pos_embed"),
        ("shape", "modality_trunks.imu.blocks.0.attn.bias_k"),
        ("add", "modality_trunks.vision.blocks.2.norm_1.weight"),
    ],
)
def test_from_file_refuses_wrong_files(tmp_path, tiny_sd, change, key):
    sd = dict(tiny_sd)
    if change == "drop":
        del sd[key]
    elif change == "shape":
        sd[key] = torch.zeros(*sd[key].shape[:-1], sd[key].shape[-1] + 1)
    else:
        sd[key] = torch.ones(32)
    path = tmp_path / "imagebind_huge.pth"
    torch.save(sd, path)
    with pytest.raises(ModelFileError, match=f"ImageBind.*{key}"):
        IB.from_file(path, IB.TINY)


def test_from_file_refuses_another_models_file_and_the_huge_config(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.bias": torch.zeros(10)}, path)
    with pytest.raises(ModelFileError, match=r"ImageBind.*(conv1\.weight|modality_)"):
        IB.from_file(path, IB.TINY)
    with pytest.raises(ModelFileError, match="ImageBind.*wrong shape.*modality_"):
        IB.from_file(TINY_FILE)  # the tiny file is not the huge checkpoint


def test_from_file_missing(tmp_path):
    with pytest.raises(MissingModelFileError, match="imagebind_huge.pth"):
        IB.from_file(tmp_path / "imagebind_huge.pth")
