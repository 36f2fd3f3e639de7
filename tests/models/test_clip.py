"""CLIP encoder: the real loading path on a tiny open_clip model saved locally; no downloads."""

from __future__ import annotations

import json

import numpy as np
import open_clip  # a declared dependency: a broken install must fail here, not skip
import pytest
import torch
import torch.nn.functional as F

from vaflow.hashing import weights_hash
from vaflow.models.artifacts import ModelFileError
from vaflow.models.clip import CLIPEncoder
from vaflow.models.encoders import build_encoder

TINY = "vaflow-test-tiny-vit"
TINY_WIDE = "vaflow-test-tiny-vit-wide"
TINY_DEEP = "vaflow-test-tiny-vit-deep"


def _config(width: int = 64, layers: int = 2) -> dict:
    # A ViT small enough to build in milliseconds: 32 px images, 8 px patches, 2 blocks, plus a minimal text tower.
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": layers, "width": width, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Register three tiny configs with open_clip and save one state dict of each; yields their paths."""
    root = tmp_path_factory.mktemp("open_clip")
    for name, cfg in ((TINY, _config()), (TINY_WIDE, _config(width=96)), (TINY_DEEP, _config(layers=3))):
        (root / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(root / f"{name}.json")
    paths = {}
    for name in (TINY, TINY_WIDE, TINY_DEEP):
        torch.manual_seed(0)
        model = open_clip.create_model(name, pretrained_text=False).eval()
        paths[name] = root / f"{name}.bin"
        torch.save(model.state_dict(), paths[name])
    return paths


def _frames(b: int, t: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (b, t, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("normalize", [True, False])
def test_features_equal_encode_image_of_the_in_memory_model(tiny, normalize):
    enc = build_encoder("clip", model_name=TINY, weights=tiny[TINY], normalize=normalize, batch_size=5)
    reference = open_clip.create_model(TINY, pretrained_text=False).eval()
    reference.load_state_dict(torch.load(tiny[TINY], weights_only=True))
    frames = _frames(2, 7)
    got = enc.encode_batch(frames)
    assert got.shape == (2, 7, 32) and got.dtype == torch.float32

    # The frames are already 32x32, so open_clip's resize and crop leave them alone: only ToTensor and Normalize act.
    cfg = open_clip.get_model_preprocess_cfg(reference)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    x = torch.from_numpy(frames).flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        want = reference.encode_image((x - mean) / std, normalize=normalize).reshape(2, 7, 32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(enc.encode(frames[1]), want[1], rtol=1e-5, atol=1e-5)
    if normalize:
        torch.testing.assert_close(got.norm(dim=-1), torch.ones(2, 7))


def test_identity_records_the_weight_file(tiny):
    enc = build_encoder("clip", model_name=TINY, weights=tiny[TINY])
    ident = enc.identity()
    assert ident["kind"] == "clip" and ident["model_name"] == TINY
    assert ident["weights_hash"] == weights_hash(tiny[TINY]) and len(ident["weights_hash"]) == 16
    assert ident["fps"] == 10.0 and ident["input_size"] == [32, 32] and ident["dim"] == 32
    assert ident["normalize"] is True
    json.dumps(ident)  # it is written beside the features


def test_missing_file_names_the_path_and_what_is_expected(tiny, tmp_path):
    missing = tmp_path / "nowhere" / "open_clip_pytorch_model.bin"
    with pytest.raises(ModelFileError) as err:
        build_encoder("clip", model_name=TINY, weights=missing)
    msg = str(err.value)
    assert str(missing) in msg and f"open_clip state dict for {TINY}" in msg


def test_no_weights_at_all_is_an_error_not_a_random_init():
    with pytest.raises(ModelFileError, match="never downloads"):
        build_encoder("clip", model_name="ViT-B-32")
    with pytest.raises(ModelFileError, match="never downloads"):
        build_encoder("clip", model_name="ViT-B-32", pretrained="openai")  # a tag without a cache dir


def test_weights_of_another_width_name_the_mismatching_keys(tiny):
    with pytest.raises(ModelFileError) as err:
        build_encoder("clip", model_name=TINY, weights=tiny[TINY_WIDE])
    msg = str(err.value)
    assert "wrong shape" in msg and "visual." in msg and str(tiny[TINY_WIDE]) in msg


def test_weights_of_another_depth_name_the_unexpected_keys(tiny):
    with pytest.raises(ModelFileError) as err:
        build_encoder("clip", model_name=TINY, weights=tiny[TINY_DEEP])
    assert "unexpected" in str(err.value) and "visual.transformer.resblocks.2." in str(err.value)


def test_unreadable_file_is_a_weights_error(tmp_path):
    bad = tmp_path / "open_clip_pytorch_model.bin"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match="could not be read"):
        build_encoder("clip", model_name=TINY, weights=bad)


def test_cache_dir_in_hugging_face_layout(tiny, tmp_path, monkeypatch):
    # A tag for the tiny model, laid out in the cache exactly as huggingface_hub would have stored it.
    tags = {"testtag": open_clip.pretrained._pcfg(hf_hub="vaflow-org/tiny-clip/")}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY, tags)
    snapshot = tmp_path / "models--vaflow-org--tiny-clip" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    with pytest.raises(ModelFileError, match="not found in cache") as err:
        build_encoder("clip", model_name=TINY, cache_dir=tmp_path, pretrained="testtag")
    assert "open_clip_pytorch_model.bin" in str(err.value)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(tiny[TINY].read_bytes())
    enc = build_encoder("clip", model_name=TINY, cache_dir=tmp_path, pretrained="testtag")
    assert (
        enc.identity()["weights_hash"] == weights_hash(tiny[TINY])
        and enc.identity()["pretrained"] == "testtag"
    )
    with pytest.raises(ModelFileError, match="known tags"):
        build_encoder("clip", model_name=TINY, cache_dir=tmp_path, pretrained="othertag")


def test_wrong_frame_size_or_dtype_is_refused(tiny):
    enc = build_encoder("clip", model_name=TINY, weights=tiny[TINY])
    with pytest.raises(ValueError, match="expects \\(32, 32\\)"):
        enc.encode(_frames(1, 2, size=48)[0])
    with pytest.raises(TypeError, match="uint8"):
        enc.encode(_frames(1, 2)[0].astype(np.float32))


def test_from_model_wraps_an_in_memory_model():
    torch.manual_seed(0)
    model = open_clip.create_model(TINY, pretrained_text=False)
    enc = CLIPEncoder.from_model(model, TINY + " (random weights)", fps=5.0)
    assert enc.identity()["weights_hash"] == "none" and enc.fps == 5.0
    out = enc.encode(_frames(1, 3)[0])
    assert out.shape == (3, 32)
    torch.testing.assert_close(out, F.normalize(out, dim=-1))


def test_weights_folder_and_unknown_model_name(tiny, tmp_path):
    folder = tmp_path / "ViT-tiny"
    folder.mkdir()
    with pytest.raises(ModelFileError, match="holds none of"):
        build_encoder("clip", model_name=TINY, weights=folder)
    (folder / "open_clip_pytorch_model.bin").write_bytes(tiny[TINY].read_bytes())
    assert build_encoder("clip", model_name=TINY, weights=folder).identity()["weights_hash"] == weights_hash(
        tiny[TINY]
    )
    with pytest.raises(ValueError, match="no model config 'ViT-B-33'.*ViT-B-32"):
        build_encoder("clip", model_name="ViT-B-33", weights=tiny[TINY])
    with pytest.raises(ValueError, match="schema"):
        build_encoder("clip", model_name="hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
