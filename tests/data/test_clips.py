"""The in-memory clip loader: each recipe's arrays equal a plain decode of every window (same order, rate, size, cut
and padding), short and missing clips are listed with their reason, and a missing ffmpeg stops the load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.world import micro_world, prepare_world
from vaflow import config
from vaflow.data import media, prepare, sources
from vaflow.data.clips import ClipBatches, MemoryClips, StreamedClips, decode_clips, load_split
from vaflow.data.latents import load_clip
from vaflow.data.media import FFmpegNotFoundError
from vaflow.data.prepare import load_manifest
from vaflow.models.cavp import log_mel
from vaflow.train import cavp, evaluators, wavevae

WORLD = micro_world(train=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[list[dict], config.Params]:
    """The micro world's manifest rows plus a missing file and a window past a clip's end, and its params."""
    root = tmp_path_factory.mktemp("clips_world")
    params = config.validate(WORLD)
    rows = load_manifest(prepare_world(WORLD, root) / "manifest.csv").to_dict("records")
    rows.insert(1, {**rows[0], "id": "missing", "path": str(root / "missing.mp4")})
    rows.insert(3, {**rows[2], "id": "late", "start": 0.5})  # half the window lies past the file's end
    return rows, params


BAD = ("missing", "late")


def _frames_audio(row, fps, size, rate, duration, n_frames, n_samples):
    frames = media.read_frames(row["path"], fps, size=(size, size), start=row["start"], duration=duration)
    audio = media.read_audio(row["path"], rate, start=row["start"], duration=duration)
    if len(frames) < n_frames or len(audio) < n_samples:
        return None
    return frames[:n_frames], audio[:n_samples]


def test_wavevae_bank_is_the_padded_policy_audio(world):
    rows, params = world
    hop = 64
    n = params.clip.padded_samples(hop)
    bank = wavevae.load_bank(pd.DataFrame(rows), params.clip, hop, progress=False)
    want = [
        (r["id"], load_clip(r["path"], float(r["start"]), params.clip, n)) for r in rows if r["id"] not in BAD
    ]
    assert bank.ids == [i for i, _ in want]
    assert bank.audio.dtype == torch.float32 and bank.audio.shape == (len(want), n)
    assert torch.equal(bank.audio, torch.from_numpy(np.stack([a for _, a in want])))
    assert [i for i, _ in bank.rejected] == list(BAD)
    assert bank.rejected[0][1].startswith("decode failed:") and bank.rejected[1][1].startswith("too short")


def test_cavp_clips_are_the_plain_decode_and_its_mel(world):
    rows, _ = world
    cfg = cavp.cavp_config(4.0, 8000, 16)
    data = cavp.load_clips(rows, cfg, duration=1.0)
    want = {
        r["id"]: _frames_audio(r, 4.0, cfg.image_size, 8000, r["duration"], 4, 8000)
        for r in rows[:1] + rows[2:]
    }
    kept = [i for i, v in want.items() if v is not None]
    assert data.ids == kept and "late" not in kept
    assert torch.equal(data.frames, torch.from_numpy(np.stack([want[i][0] for i in kept])))
    waves = torch.from_numpy(np.stack([want[i][1] for i in kept]))
    assert torch.equal(data.mel, log_mel(waves, 8000, cfg.n_mels, cfg.hop, cfg.n_fft))
    assert [i for i, _ in data.rejected] == ["missing", "late"]
    assert data.rejected[0][1].startswith("decode failed:") and data.rejected[1][1].startswith("too short:")


def test_evaluator_clips_are_the_plain_decode(world):
    rows, _ = world
    cfg = evaluators.evaluator_config(config.EvaluatorsConfig(), 8000, 2)
    data = load_split(rows, cfg, 1.0)
    n_frames = max(1, round(cfg.fps))
    want = {
        r["id"]: _frames_audio(r, cfg.fps, cfg.side, 8000, 1.0, n_frames, 8000) for r in rows[:1] + rows[2:]
    }
    kept = [i for i, v in want.items() if v is not None]
    assert data.ids == kept
    assert data.labels == [str(r["label"]) for r in rows if r["id"] in kept]
    assert torch.equal(data.frames, torch.from_numpy(np.stack([want[i][0] for i in kept])))
    assert torch.equal(data.audio, torch.from_numpy(np.stack([want[i][1] for i in kept])))
    assert [i for i, _ in data.rejected] == ["missing", "late"]


def test_no_clip_gives_empty_arrays_of_the_right_shape():
    cfg = evaluators.evaluator_config(config.EvaluatorsConfig(), 8000, 2)
    data = load_split([], cfg, 1.0)
    assert (
        data.frames.shape == (0, max(1, round(cfg.fps)), cfg.side, cfg.side, 3)
        and data.frames.dtype == torch.uint8
    )
    assert data.audio.shape == (0, 8000) and data.audio.dtype == torch.float32


def test_missing_ffmpeg_stops_the_load():
    def decode(row):
        raise FFmpegNotFoundError("ffmpeg", "not found")

    with pytest.raises(FFmpegNotFoundError):
        decode_clips([{"id": "a"}], decode)


def test_ranks_split_each_global_batch_of_one_permutation():
    n = 10
    tensors = {"frames": torch.arange(n).view(n, 1).expand(n, 3).clone(), "mel": torch.zeros(n, 8, 5)}

    def seen(stream, epoch):
        stream.set_epoch(epoch)
        return [b["frames"][:, 0].tolist() for b in stream]

    one = ClipBatches(tensors, 4, seed=3)
    ranks = [ClipBatches(tensors, 2, rank=r, world=2, seed=3) for r in range(2)]
    for epoch in range(2):
        together = [a + b for a, b in zip(seen(ranks[0], epoch), seen(ranks[1], epoch), strict=True)]
        assert together == seen(one, epoch) and len(together) == 2  # the incomplete batch is dropped
    assert seen(one, 0) != seen(one, 1)
    with pytest.raises(ValueError, match="fewer than one global batch of 12: lower x.batch_size"):
        ClipBatches(tensors, 6, world=2, what="x.batch_size")
    with pytest.raises(ValueError, match="different lengths"):
        ClipBatches({**tensors, "label": torch.zeros(n - 1)}, 2)


# --------------------------------------------------------------------------------------------
# Streaming: the same batches as in memory, memory bounded by the clips in flight
# --------------------------------------------------------------------------------------------


def test_a_streamed_split_gives_the_crop_stream_the_batches_of_the_split_in_memory(world):
    rows, params = world
    frame = pd.DataFrame(rows)
    memory, in_memory = wavevae.open_train_clips(frame, params.clip, 64, workers=2, in_memory_mb=1e3, progress=False)
    streamed, scanned = wavevae.open_train_clips(frame, params.clip, 64, workers=2, in_memory_mb=0, progress=False)
    assert isinstance(memory, MemoryClips) and isinstance(streamed, StreamedClips)
    assert scanned.ids == in_memory.ids and scanned.rejected == in_memory.rejected  # the scan rejects what loading does
    assert not any(scanned.parts[i] for i in range(len(scanned.parts)))  # the scan keeps nothing
    for rank in range(2):
        one = wavevae.CropStream(memory, 2, 256, rank=rank, world=2, seed=5)
        two = wavevae.CropStream(streamed, 2, 256, rank=rank, world=2, seed=5)
        for _ in range(2):  # two epochs
            a, b = list(one), list(two)
            assert len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_streamed_crop_stream_resumes_at_its_position(world):
    rows, params = world
    clips, _ = wavevae.open_train_clips(pd.DataFrame(rows), params.clip, 64, 1, in_memory_mb=0, progress=False)
    full = list(wavevae.CropStream(clips, 1, 128, seed=2))
    stream = wavevae.CropStream(clips, 1, 128, seed=2)
    it = iter(stream)
    next(it)
    resumed = wavevae.CropStream(clips, 1, 128, seed=2)
    resumed.load_state_dict(stream.state_dict())
    rest = list(resumed)
    assert len(rest) == len(full) - 1 and all(torch.equal(x, y) for x, y in zip(rest, full[1:], strict=True))


def test_a_split_is_streamed_only_above_the_memory_setting(world, monkeypatch):
    rows, params = world
    frame = pd.DataFrame(rows)
    n = params.clip.padded_samples(64)
    mb = len(frame) * n * 4 / 2**20
    assert isinstance(wavevae.open_train_clips(frame, params.clip, 64, 1, mb, progress=False)[0], MemoryClips)
    assert isinstance(wavevae.open_train_clips(frame, params.clip, 64, 1, mb * 0.99, progress=False)[0], StreamedClips)


def test_a_streamed_cavp_split_gives_the_batches_of_the_split_in_memory(world):
    rows, _ = world
    cfg = cavp.cavp_config(4.0, 8000, 16)
    memory, kept = cavp.open_train_clips(rows, cfg, 1.0, workers=2, in_memory_mb=1e3)
    streamed, scanned = cavp.open_train_clips(rows, cfg, 1.0, workers=2, in_memory_mb=0)
    assert isinstance(memory, MemoryClips) and isinstance(streamed, StreamedClips)
    assert scanned.ids == kept.ids and scanned.rejected == kept.rejected
    one, two = (list(ClipBatches(store, 2, seed=1)) for store in (memory, streamed))
    assert len(one) == len(two) == len(kept.ids) // 2
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a["frames"], b["frames"])
        torch.testing.assert_close(a["mel"], b["mel"], rtol=0, atol=1e-5)  # one clip's log-mel against a chunk's
