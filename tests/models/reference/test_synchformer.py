"""Synchformer (DeSync) against the evaluator fixtures: the official keys and shapes, the reference toolkit's
outputs under the synthetic weights (waveform -> afeats, uint8 video -> vfeats, features -> logits -> DeSync),
and strict loading of files in the official layout."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from tests.models.reference.fixtures import keys, reference, synth_state_dict
from vaflow.models.artifacts import MissingModelFileError, ModelFileError
from vaflow.models.reference import load_strict
from vaflow.models.reference import synchformer as sf

TOL = 1e-4  # relative: max |diff| / max |reference|


def _close(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape
    return ((out - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope="module")
def ref() -> dict:
    return reference("synchformer")


@pytest.fixture(scope="module")
def model() -> sf.Synchformer:
    """The full-size network with the fixtures' synthetic weights, built once (about 1 GB in float32)."""
    return load_strict(sf.build(), "synthetic", "Synchformer", tensors=synth_state_dict("synchformer"))


def _shaped_like(spec: dict[str, dict], drop: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict with `spec`'s keys and shapes whose tensors are views of one random storage (a file of a few
    MB rather than 1 GB), each key at its own offset; `drop`: a key left out."""
    sizes = {k: torch.Size(v["shape"]).numel() for k, v in spec.items() if k != drop}
    base = torch.randn(max(sizes.values()) + len(sizes), generator=torch.Generator().manual_seed(0))
    return {k: base[i : i + n].view(spec[k]["shape"]) for i, (k, n) in enumerate(sizes.items())}


# ----------------------------------------------------------------------------------------------------------------
# Architecture
# ----------------------------------------------------------------------------------------------------------------


def test_state_dict_keys_and_shapes_equal_the_official_checkpoint():
    with torch.device("meta"):
        net = sf.Synchformer()
    expected = keys("synchformer")["state_dict"]
    found = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert found == {k: v["shape"] for k, v in expected.items()}
    assert len(found) == 513
    assert sum(p.numel() for p in net.parameters()) == 237_460_245


# ----------------------------------------------------------------------------------------------------------------
# Reference outputs under the synthetic weights
# ----------------------------------------------------------------------------------------------------------------


def test_afeats_from_the_waveform_reproduce_the_reference(model, ref):
    out = model.afeats(ref["wav_16k"])  # (1, 15360): 2 segments
    assert _close(out, ref["afeats"]) < TOL


def test_vfeats_from_uint8_frames_reproduce_the_reference(model, ref):
    out = model.vfeats(ref["video_24f_uint8"])  # (1, 24, 3, 224, 224): 2 segments
    assert _close(out, ref["vfeats"]) < TOL


def test_logits_class_grid_and_desync_reproduce_the_reference(model, ref):
    logits = model.logits(ref["vis_feats_14"], ref["aud_feats_14"])
    assert _close(logits, ref["logits"]) < TOL
    assert torch.equal(sf.class_grid(), ref["class_grid"])
    score = model.desync(ref["vis_feats_14"], ref["aud_feats_14"])  # 14 segments: both windows are the same
    assert torch.allclose(score.desync, ref["desync"])
    assert torch.allclose(score.offset, ref["desync"].expand(1, 2))


def test_desync_scores_the_first_and_the_last_14_of_24_segments(model, ref):
    v, a = ref["vis_feats_14"], ref["aud_feats_14"]
    g = torch.Generator().manual_seed(1)
    v24 = torch.cat([v, torch.randn(1, 10, 8, 768, generator=g)], dim=1)  # first window: the reference's
    a24 = torch.cat([a, torch.randn(1, 10, 6, 768, generator=g)], dim=1)
    score = model.desync(v24, a24)
    assert _close(score.logits[:, 0], ref["logits"]) < TOL
    last = model.logits(v24[:, 10:], a24[:, 10:])
    assert torch.allclose(score.logits[:, 1], last)
    second = sf.class_grid()[last.argmax(-1)].abs()
    assert torch.allclose(score.desync, (ref["desync"] + second) / 2)


# ----------------------------------------------------------------------------------------------------------------
# Input pipelines
# ----------------------------------------------------------------------------------------------------------------


def test_log_mel_segments_cut_the_waveform_and_pad_one_frame_in_log_space():
    wav = torch.randn(2, 128000, generator=torch.Generator().manual_seed(2)) * 0.1
    mel = sf.log_mel_segments(wav)
    assert mel.shape == (2, 24, 128, 66)  # 8 s: 24 segments of 65 STFT frames + 1 pad
    pad = (0.0 - sf.MEL_MEAN) / (2 * sf.MEL_STD)
    assert torch.allclose(mel[..., -1], torch.full_like(mel[..., -1], pad))
    assert torch.equal(sf.log_mel_segments(wav[:, 5120:15360])[:, 0], mel[:, 1])  # segment 1 starts at 5120


def test_pixel_segments_match_the_toolkits_transform_on_non_square_frames():
    frames = torch.randint(
        0, 256, (1, 24, 3, 180, 320), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )
    toolkit = v2.Compose(
        [
            v2.Resize(224, interpolation=v2.InterpolationMode.BICUBIC),
            v2.CenterCrop(224),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
        ]
    )(frames[0])  # (24, 3, 224, 224)
    out = sf.pixel_segments(frames)
    assert out.shape == (1, 2, 3, 16, 224, 224)
    assert torch.equal(out[0, 0], toolkit[:16].transpose(0, 1))
    assert torch.equal(out[0, 1], toolkit[8:24].transpose(0, 1))


def test_bad_inputs_are_value_errors_naming_the_shape(model):
    with pytest.raises(ValueError, match=r"\(2, 100\)"):
        sf.log_mel_segments(torch.zeros(2, 100))
    with pytest.raises(ValueError, match="uint8"):
        sf.pixel_segments(torch.zeros(1, 16, 3, 224, 224))
    with pytest.raises(ValueError, match=r"\(1, 127999\)"):
        sf.fit_audio(torch.zeros(1, 127999))
    with pytest.raises(ValueError, match="199"):
        sf.fit_frames(torch.zeros(1, 199, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="14 segments"):
        model.logits(torch.zeros(1, 13, 8, 768), torch.zeros(1, 13, 6, 768))
    with pytest.raises(ValueError, match=">= 14 segments"):
        model.desync(torch.zeros(1, 24, 8, 768), torch.zeros(1, 23, 6, 768))
    assert sf.fit_audio(torch.zeros(1, 130000)).shape == (1, 128000)
    assert sf.fit_frames(torch.zeros(1, 210, 3, 8, 8)).shape == (1, 200, 3, 8, 8)


# ----------------------------------------------------------------------------------------------------------------
# Loading the official file layout
# ----------------------------------------------------------------------------------------------------------------


def test_from_file_loads_a_plain_state_dict_strictly(tmp_path):
    tensors = _shaped_like(keys("synchformer")["state_dict"])
    path = tmp_path / "synchformer_state_dict.pth"
    torch.save(tensors, path)  # the official layout: a plain state dict, no prefix
    net = sf.from_file(path)
    assert not net.training
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


@pytest.mark.parametrize("case", ["other_model", "missing_key", "wrong_shape"])
def test_from_file_refuses_another_models_file(tmp_path, case):
    spec = keys("synchformer")["state_dict"]
    if case == "other_model":
        tensors, key = _shaped_like(keys("passt")["state_dict"]), "vfeat_extractor.cls_token"
    elif case == "missing_key":
        key = "transformer.off_head.weight"
        tensors = _shaped_like(spec, drop=key)
    else:
        key = "afeat_extractor.ast.embeddings.position_embeddings"
        tensors = _shaped_like(spec)
        tensors[key] = torch.zeros(1, 1214, 768)  # AST's full AudioSet table, not cut to 74 positions
    path = tmp_path / "synchformer_state_dict.pth"
    torch.save(tensors, path)
    with pytest.raises(ModelFileError, match="Synchformer") as info:
        sf.from_file(path)
    assert key in str(info.value)


def test_from_file_without_a_file_is_a_missing_model_file_error(tmp_path):
    with pytest.raises(MissingModelFileError, match="Synchformer"):
        sf.from_file(tmp_path / "synchformer_state_dict.pth")
