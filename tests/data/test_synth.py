"""The synthetic world: determinism, every class, and ground truth that agrees with the decoded media."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from vaflow.config import SynthConfig
from vaflow.data import media, synth

TINY = {"clips_per_split": {"train": 4, "test": 2}}
# One object, so each check reads only that object's sound and pixels.
SOLO = SynthConfig(**TINY, second_object_p=0.0, distractor_p=0.5)
EVENT_CLASSES = [n for n, c in synth.CLASSES.items() if c.kind == "event"]
CONTINUOUS_CLASSES = [n for n, c in synth.CLASSES.items() if c.kind == "continuous"]


def _one_per_class(cfg: SynthConfig) -> dict[str, synth.SynthClip]:
    """Indices 0..len(CLASSES)-1 of a split hold every class once (clip_label shuffles blocks)."""
    clips = [synth.render_clip(cfg, "train", i) for i in range(len(synth.CLASSES))]
    return {c.label: c for c in clips}


@pytest.fixture(scope="module")
def decoded(tmp_path_factory) -> dict[str, tuple[synth.SynthClip, np.ndarray, np.ndarray]]:
    """Every class rendered, written as mp4, and decoded back: label → (clip, frames, audio)."""
    out = tmp_path_factory.mktemp("decoded")
    result = {}
    for label, clip in _one_per_class(SOLO).items():
        path = out / f"{clip.id}.mp4"
        media.write_video(path, clip.frames, SOLO.fps, clip.audio, SOLO.sample_rate)
        frames = media.read_frames(path, SOLO.fps)
        audio = media.read_audio(path, SOLO.sample_rate)
        result[label] = (clip, frames, audio)
    return result


# --------------------------------------------------------------------------------------------
# Pure rendering
# --------------------------------------------------------------------------------------------


def test_registry_has_event_and_continuous_classes():
    assert 8 <= len(synth.CLASSES) <= 10
    assert len(EVENT_CLASSES) >= 3 and len(CONTINUOUS_CLASSES) >= 2
    for name, cls in synth.CLASSES.items():
        assert cls.name == name
        assert (cls.param is None) == (cls.kind == "event")


def test_same_seed_same_clip_other_seed_other_clip():
    a, b = synth.render_clip(SOLO, "train", 3), synth.render_clip(SOLO, "train", 3)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert a.truth == b.truth

    other = SynthConfig(**TINY, seed=1, second_object_p=0.0, distractor_p=0.5)
    c = synth.render_clip(other, "train", 3)
    assert not np.array_equal(a.audio, c.audio)
    assert c.truth["seed"] == 1
    d = synth.render_clip(SOLO, "test", 3)
    assert not np.array_equal(a.audio, d.audio)


def test_floor_twin_differs_only_by_its_noise_floor():
    clip = synth.render_clip(SOLO, "train", 3)
    np.testing.assert_array_equal(synth.render_clip(SOLO, "train", 3, floor_draw=0).audio, clip.audio)
    twin, other = (synth.render_clip(SOLO, "train", 3, floor_draw=k) for k in (1, 2))
    np.testing.assert_array_equal(twin.frames, clip.frames)
    assert twin.truth == clip.truth
    assert not np.array_equal(twin.audio, other.audio)
    # Two independent draws of N(0, NOISE_FLOOR²) differ by N(0, 2·NOISE_FLOOR²) (up to the peak scaling ≤ 1).
    diff = (twin.audio - clip.audio).astype(np.float64)
    assert np.sqrt(2) * 1e-3 * 0.8 < diff.std() < np.sqrt(2) * 1e-3 * 1.05
    assert abs(diff.mean()) < 1e-4


def test_every_class_renders_with_consistent_truth():
    cfg = SOLO
    clips = _one_per_class(cfg)
    assert set(clips) == set(synth.CLASSES)
    n_frames, n_samples = round(cfg.duration * cfg.fps), round(cfg.duration * cfg.sample_rate)
    for label, clip in clips.items():
        assert re.fullmatch(r"synth_train_\d{6}", clip.id)
        assert clip.frames.shape == (n_frames, cfg.size, cfg.size, 3) and clip.frames.dtype == np.uint8
        assert clip.audio.shape == (n_samples,) and clip.audio.dtype == np.float32
        assert 0.01 < np.abs(clip.audio).max() <= 0.9
        truth = clip.truth
        assert json.loads(json.dumps(truth)) == truth
        assert truth["label"] == label and truth["classes"] == [label] and truth["id"] == clip.id
        times = [e["time"] for e in truth["events"]]
        assert times == sorted(times) and all(0 <= t < cfg.duration for t in times)
        if synth.CLASSES[label].kind == "event":
            assert len(times) >= 1 and truth["curves"] == {}
            # Events sit on video frames, so the visual event is drawn exactly at the recorded time.
            assert all(abs(t * cfg.fps - round(t * cfg.fps)) < 1e-6 for t in times)
        else:
            assert times == []
            curve = truth["curves"][label]
            assert curve["fps"] == cfg.fps and curve["param"] == synth.CLASSES[label].param
            assert len(curve["values"]) == n_frames and np.ptp(curve["values"]) > 0


def test_second_object_and_distractors():
    cfg = SynthConfig(**TINY, second_object_p=1.0, distractor_p=1.0)
    for i in range(len(synth.CLASSES)):
        truth = synth.render_clip(cfg, "train", i).truth
        main, second = truth["classes"]
        assert main == truth["label"] and second != main
        assert {e["class"] for e in truth["events"]} == {n for n in (main, second) if n in EVENT_CLASSES}
        assert set(truth["curves"]) == {n for n in (main, second) if n in CONTINUOUS_CLASSES}
    # Distractors are silent: toggling them leaves the sound unchanged and changes the pixels.
    quiet = synth.render_clip(SynthConfig(**TINY, second_object_p=0.0, distractor_p=0.0), "train", 5)
    busy = synth.render_clip(SynthConfig(**TINY, second_object_p=0.0, distractor_p=1.0), "train", 5)
    np.testing.assert_array_equal(quiet.audio, busy.audio)
    assert not np.array_equal(quiet.frames, busy.frames)


def test_bad_split_is_an_error():
    with pytest.raises(ValueError, match="unknown split"):
        synth.render_clip(SOLO, "dev", 0)


# --------------------------------------------------------------------------------------------
# Ground truth against the decoded mp4
# --------------------------------------------------------------------------------------------


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


@pytest.mark.parametrize("label", EVENT_CLASSES)
def test_events_are_audible_at_their_time(decoded, label):
    clip, _, audio = decoded[label]
    sr, frame = SOLO.sample_rate, 1 / SOLO.fps
    w = round(0.01 * sr)  # 10 ms windows
    for event in clip.truth["events"]:
        s = round(event["time"] * sr)
        before, after = _rms(audio[s - 3 * w : s - w]), _rms(audio[s : s + w])
        assert after > 10 * before, (label, event, before, after)
        # Onset: the first 1 ms window above a tenth of the event's 10 ms level, within one video frame.
        ms = round(0.001 * sr)
        lo = s - round(frame * sr)
        env = [_rms(audio[i : i + ms]) for i in range(lo, s + round(frame * sr), ms)]
        onset = (lo + ms * int(np.argmax(np.asarray(env) > 0.1 * after))) / sr
        assert abs(onset - event["time"]) <= frame, (label, event, onset)


def _mask_rows(mask: np.ndarray) -> np.ndarray:
    """Lowest row (T,) covered by a (T, H, W) mask; -1 where the mask is empty."""
    rows = np.arange(mask.shape[1])
    return np.where(mask.any(axis=2), rows[None, :], -1).max(axis=1)


def test_events_are_visible_at_their_time(decoded):
    frames_of = {label: decoded[label][1].astype(np.float32) for label in ("lamp", "ball", "hammer")}
    event_frames = {
        label: [round(e["time"] * SOLO.fps) for e in decoded[label][0].truth["events"]] for label in frames_of
    }
    # Lamp: the frame brightens on each flash.
    lamp = frames_of["lamp"].mean(axis=(1, 2, 3))
    for k in event_frames["lamp"]:
        assert lamp[k] > lamp[k - 1] + 2, (k, lamp[k - 1 : k + 2])
    # Ball (red) and hammer head (orange) are at their lowest exactly on contact frames.
    f = frames_of["ball"]
    red = (f[..., 0] > 150) & (f[..., 1] < 110) & (f[..., 2] < 110)
    bottom = _mask_rows(red)
    for k in event_frames["ball"]:
        assert bottom[k] >= bottom.max() - 1, (k, bottom)
    f = frames_of["hammer"]
    orange = (f[..., 0] > 190) & (f[..., 1] > 90) & (f[..., 1] < 190) & (f[..., 2] < 90)
    bottom = _mask_rows(orange)
    for k in event_frames["hammer"]:
        assert bottom[k] >= bottom.max() - 1, (k, bottom)
        assert bottom[k] > bottom[k - 2] + 2  # it came down onto the anvil


def _frame_windows(audio: np.ndarray, n_frames: int, win: int) -> np.ndarray:
    """(T, win) audio windows centred on each video frame's time (edges padded)."""
    hop = SOLO.sample_rate // SOLO.fps
    padded = np.pad(audio, (win, win))
    return np.stack([padded[win + k * hop - win // 2 : win + k * hop + win // 2] for k in range(n_frames)])


def _dominant_hz(windows: np.ndarray, lo: float, hi: float) -> np.ndarray:
    n_fft = 16384
    spec = np.abs(np.fft.rfft(windows * np.hanning(windows.shape[1]), n_fft))
    f = np.fft.rfftfreq(n_fft, 1 / SOLO.sample_rate)
    band = (f >= lo) & (f <= hi)
    return f[band][np.argmax(spec[:, band], axis=1)]


@pytest.mark.parametrize(("label", "band"), [("balloon", (250, 1000)), ("car", (50, 260))])
def test_pitch_follows_curve(decoded, label, band):
    clip, _, audio = decoded[label]
    curve = np.asarray(clip.truth["curves"][label]["values"])
    measured = _dominant_hz(_frame_windows(audio, len(curve), 1600), *band)
    inside = slice(1, -1)  # the first and last windows are half padding
    assert np.corrcoef(measured[inside], curve[inside])[0, 1] > 0.8
    assert np.median(np.abs(measured - curve)[inside]) < 15  # Hz


def test_loudness_and_density_follow_curves(decoded):
    clip, _, audio = decoded["orb"]
    loud = np.asarray(clip.truth["curves"]["orb"]["values"])
    rms = np.sqrt((_frame_windows(audio, len(loud), 800) ** 2).mean(axis=1))
    assert np.corrcoef(rms[1:-1], loud[1:-1])[0, 1] > 0.8

    clip, _, audio = decoded["rain"]
    density = np.asarray(clip.truth["curves"]["rain"]["values"])
    high = np.fft.irfft(
        np.fft.rfft(audio) * (np.fft.rfftfreq(len(audio), 1 / SOLO.sample_rate) > 2000), len(audio)
    )
    energy = (_frame_windows(high, len(density), 3200) ** 2).mean(axis=1)  # 200 ms windows: clicks are sparse
    assert np.corrcoef(energy[2:-2], density[2:-2])[0, 1] > 0.7


# --------------------------------------------------------------------------------------------
# generate: files on disk, resume, parallel == serial
# --------------------------------------------------------------------------------------------


def test_generate_writes_resumes_and_matches_parallel(tmp_path):
    cfg = SynthConfig(**TINY, second_object_p=0.5)
    serial = synth.generate(cfg, tmp_path / "a", workers=1, progress=False)
    assert list(serial.columns) == synth.INDEX_COLUMNS
    assert len(serial) == 6 and list(serial["split"]) == ["test"] * 2 + ["train"] * 4
    assert list(serial["id"]) == sorted(serial["id"][:2]) + sorted(serial["id"][2:])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "index.csv"), serial)
    for row in serial.itertuples():
        info = media.probe(tmp_path / "a" / row.path)
        assert info.has_audio and info.audio[0].sample_rate == cfg.sample_rate
        assert (info.width, info.height) == (cfg.size, cfg.size) and info.fps == pytest.approx(cfg.fps)
        assert info.duration == pytest.approx(cfg.duration, abs=0.1)
        truth = json.loads((tmp_path / "a" / "truth" / f"{row.id}.json").read_text())
        assert truth == synth.render_clip(cfg, row.split, int(row.id[-6:])).truth
        assert truth["label"] == row.label

    # Rerun: nothing is rewritten. With one sidecar gone, only that clip is rendered again.
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("*.*") if p.name != "index.csv"}
    (tmp_path / "a" / "truth" / "synth_train_000001.json").unlink()
    again = synth.generate(cfg, tmp_path / "a", workers=1, progress=False)
    pd.testing.assert_frame_equal(again, serial)
    changed = {p.name for p, m in mtimes.items() if not p.exists() or p.stat().st_mtime_ns != m}
    assert changed == {"synth_train_000001.mp4", "synth_train_000001.json"}

    parallel = synth.generate(cfg, tmp_path / "b", workers=2, progress=False)
    pd.testing.assert_frame_equal(parallel, serial)
    for row in serial.itertuples():
        name = f"truth/{row.id}.json"
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
