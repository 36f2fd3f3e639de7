"""Pixel features: area down-sampling, [-1, 1] scaling, channel-first flattening."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaflow.models.encoders import build_encoder


def test_constant_frames_map_to_their_scaled_value():
    enc = build_encoder("pixels", input_size=(16, 16), size=(4, 4))
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    frames[0], frames[1], frames[2] = 0, 255, 51
    out = enc.encode(frames)
    assert out.shape == (3, 48) and out.dtype == torch.float32 and enc.dim == 48
    torch.testing.assert_close(out[0], torch.full((48,), -1.0))
    torch.testing.assert_close(out[1], torch.full((48,), 1.0))
    torch.testing.assert_close(out[2], torch.full((48,), 51 / 255 * 2 - 1))


def test_area_average_and_channel_first_layout():
    enc = build_encoder("pixels", input_size=(4, 4), size=(2, 2))
    frame = np.zeros((1, 4, 4, 3), np.uint8)
    frame[0, :2, :2, 0] = 255  # red fills the top-left 2x2 cell
    frame[0, 0, 2, 1] = 255  # one green pixel of four in the top-right cell
    out = enc.encode(frame)[0].reshape(3, 2, 2)  # (C, h, w)
    want = -torch.ones(3, 2, 2)
    want[0, 0, 0] = 1.0
    want[1, 0, 1] = 0.25 * 2 - 1
    torch.testing.assert_close(out, want)


def test_batch_matches_single_and_identity():
    enc = build_encoder("pixels", fps=4.0)
    frames = np.random.default_rng(0).integers(0, 256, (2, 5, 64, 64, 3), dtype=np.uint8)
    batch = enc.encode_batch(frames)
    assert batch.shape == (2, 5, 192) and batch.min() >= -1 and batch.max() <= 1
    torch.testing.assert_close(batch[1], enc.encode(frames[1]))
    assert enc.identity() == {
        "kind": "pixels",
        "model_name": "pixels-8x8",
        "weights_hash": "none",
        "fps": 4.0,
        "input_size": [64, 64],
        "dim": 192,
        "size": [8, 8],
    }


def test_bad_settings_and_inputs_are_refused():
    with pytest.raises(ValueError, match="must not exceed"):
        build_encoder("pixels", input_size=(8, 8), size=(16, 16))
    enc = build_encoder("pixels")
    with pytest.raises(ValueError, match="expects \\(64, 64\\)"):
        enc.encode(np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        enc.encode(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="use encode_batch"):
        enc.encode(np.zeros((1, 2, 64, 64, 3), np.uint8))
