"""Media I/O against the real ffmpeg binary: round trips, A/V sync, time windows, muxing, bad files."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.data.badmedia import BAD_MEDIA_CASES, REQUESTED_DURATION, make_clip
from vaflow.data import media
from vaflow.data.media import MediaError, reading, writing
from vaflow.data.media.probing import _parse_probe

# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------


def _gradient_frames(n: int, height: int, width: int) -> np.ndarray:
    """(n, H, W, 3) uint8 smooth, moving colour ramps: x264 keeps them close to the original."""
    t, y, x = np.meshgrid(np.arange(n), np.arange(height), np.arange(width), indexing="ij")
    r = (x * 255 // max(1, width - 1) + 3 * t) % 256
    g = y * 255 // max(1, height - 1)
    b = (128 + 2 * t) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def _tones(n: int, sample_rate: int, freqs=(220.0, 330.0, 550.0)) -> np.ndarray:
    t = np.arange(n) / sample_rate
    return (sum(np.sin(2 * np.pi * f * t + i) for i, f in enumerate(freqs)) * 0.25).astype(np.float32)


def _flash_clip(path: Path, fps: float, n_frames: int, sample_rate: int, times: list[float]) -> None:
    """Black frames with a white frame at each of `times`, and a 2.5 ms click in the audio at the same times."""
    frames = np.zeros((n_frames, 32, 32, 3), np.uint8)
    audio = np.zeros(round(n_frames / fps * sample_rate), np.float32)
    for t in times:
        frames[round(t * fps)] = 255
        i = round(t * sample_rate)
        audio[i : i + sample_rate // 400] = 0.9
    media.write_video(path, frames, fps, audio, sample_rate)


def _flash_index(frames: np.ndarray) -> int:
    return int(frames.reshape(len(frames), -1).mean(axis=1).argmax())


def _click_time(audio: np.ndarray, sample_rate: int) -> float:
    return float(np.abs(audio).argmax()) / sample_rate


@pytest.fixture(scope="module")
def flash_clip(tmp_path_factory) -> tuple[Path, float, int]:
    """3 s at 25 fps / 16 kHz with flashes and clicks at 1.0 s and 2.2 s.

    x264 "ultrafast" (no B-frames) is the case where a naive input-side seek misplaces AAC audio.
    """
    path = tmp_path_factory.mktemp("flash") / "flash.mp4"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writing, "_X264_PRESET", "ultrafast")
        _flash_clip(path, 25, 75, 16000, [1.0, 2.2])
    return path, 25.0, 16000


# --------------------------------------------------------------------------------------------------------
# Round trip, sync, windows
# --------------------------------------------------------------------------------------------------------


def test_round_trip(tmp_path):
    path = tmp_path / "rt.mp4"
    fps, n, sr = 15, 30, 16000
    frames = _gradient_frames(n, 48, 64)
    audio = _tones(round(n / fps * sr), sr)
    media.write_video(path, frames, fps, audio, sr)

    info = media.probe(path)
    assert info.duration == pytest.approx(2.0, abs=0.05)
    assert (info.width, info.height, info.fps, info.video_codec) == (64, 48, 15.0, "h264")
    assert info.has_video and info.has_audio
    assert info.audio[0].sample_rate == sr and info.audio[0].channels == 1 and info.audio[0].codec == "aac"
    media.verify_decode(path)

    back = media.read_frames(path, fps)
    assert back.shape == (n, 48, 64, 3) and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames).mean() < 6  # lossy, but the same pictures in the same order

    half = media.read_frames(path, fps / 2, size=(24, 32))
    assert half.shape == (n // 2, 24, 32, 3)

    out = media.read_audio(path, 22050, duration=2.0)  # resampled 16 kHz -> 22.05 kHz
    assert out.shape == (44100,) and out.dtype == np.float32
    ref = _tones(44100, 22050)
    assert np.corrcoef(out[2000:-2000], ref[2000:-2000])[0, 1] > 0.95
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed away


@pytest.mark.parametrize("fps, n_frames, flash", [(25, 50, 17), (10, 25, 3), (30, 60, 44)])
def test_av_sync(tmp_path, fps, n_frames, flash):
    path = tmp_path / "sync.mp4"
    sr = 16000
    _flash_clip(path, fps, n_frames, sr, [flash / fps])
    frames = media.read_frames(path, fps)
    audio = media.read_audio(path, sr)
    assert len(frames) == n_frames
    assert _flash_index(frames) == flash
    assert abs(_click_time(audio, sr) - flash / fps) < 1 / fps


@pytest.mark.parametrize("start", [0.0, 0.01, 0.6, 0.63, 0.97])
def test_time_window_first_event(flash_clip, start):
    path, fps, sr = flash_clip
    frames = media.read_frames(path, fps, start=start, duration=1.2)
    audio = media.read_audio(path, 8000, start=start, duration=1.2)
    assert frames.shape[0] == 30 and audio.shape == (9600,)
    # Frame k shows the source frame nearest to start + k / fps, and the flash is seen exactly once.
    assert _flash_index(frames) == round((1.0 - start) * fps)
    assert (frames.reshape(30, -1).mean(axis=1) > 128).sum() == 1
    # Windows that start inside the first AAC frame are where an input-side seek would shift the audio.
    assert abs(_click_time(audio, 8000) - (1.0 - start)) < 1 / fps


@pytest.mark.parametrize("start", [1.8, 2.0])
def test_time_window_late_event_uses_input_seek(flash_clip, start):
    path, fps, sr = flash_clip
    frames = media.read_frames(path, fps, start=start, duration=0.8)
    audio = media.read_audio(path, sr, start=start, duration=0.8)
    assert frames.shape[0] == 20 and audio.shape == (round(0.8 * sr),)
    assert _flash_index(frames) == round((2.2 - start) * fps)
    assert abs(_click_time(audio, sr) - (2.2 - start)) < 1 / fps


def test_window_past_the_end_returns_what_exists(flash_clip):
    path, fps, sr = flash_clip
    frames = media.read_frames(path, fps, start=2.5, duration=1.0)  # 0.5 s of the 1 s window exist
    audio = media.read_audio(path, sr, start=2.5, duration=1.0)
    assert abs(len(frames) - 0.5 * fps) <= 1
    assert abs(len(audio) - 0.5 * sr) <= sr // 100


@pytest.mark.parametrize("start, duration", [(0.0, 1.2), (0.4, 0.8), (1.7, 0.8), (2.5, 1.0)])
def test_one_ffmpeg_run_reads_what_the_frame_and_audio_reads_do(flash_clip, start, duration):
    """Windows at the start, before and past the input seek's threshold, and running past the end."""
    path, fps, sr = flash_clip
    frames, audio = media.read_av(path, fps, (24, 32), sr, start, duration)
    assert np.array_equal(frames, media.read_frames(path, fps, (24, 32), start=start, duration=duration))
    assert np.array_equal(audio, media.read_audio(path, sr, start=start, duration=duration))


def test_one_ffmpeg_run_of_a_silent_video_is_a_media_error_naming_the_file(tmp_path):
    path = tmp_path / "mute.mp4"
    media.write_video(path, _gradient_frames(10, 16, 16), 10)
    with pytest.raises(MediaError) as err:
        media.read_av(path, 10, (16, 16), 8000, 0.0, 1.0)
    _assert_names_file(err.value, path)


def test_iter_frames_matches_read_frames_and_stops_early(flash_clip):
    path, fps, _ = flash_clip
    whole = media.read_frames(path, fps, size=(16, 16), duration=3.0)
    chunks = list(media.iter_frames(path, fps, size=(16, 16), duration=3.0, chunk=16))
    assert [len(c) for c in chunks] == [16, 16, 16, 16, 11]
    np.testing.assert_array_equal(np.concatenate(chunks), whole)
    gen = media.iter_frames(path, fps, chunk=4)
    assert next(gen).shape == (4, 32, 32, 3)
    gen.close()  # kills ffmpeg; must not hang or raise


def test_max_frames_and_unbounded_cap(flash_clip, monkeypatch):
    path, fps, _ = flash_clip
    assert media.read_frames(path, fps, max_frames=7).shape[0] == 7
    assert media.read_frames(path, fps, duration=2.0, max_frames=7).shape[0] == 7
    monkeypatch.setattr(reading, "_UNBOUNDED_READ_BYTES", 32 * 32 * 3 * 10)  # room for 10 frames only
    with pytest.raises(MediaError, match="longer than 10 frames"):
        media.read_frames(path, fps)


# --------------------------------------------------------------------------------------------------------
# Writing and muxing
# --------------------------------------------------------------------------------------------------------


def test_mux_audio_replaces_the_track(tmp_path):
    src = make_clip(tmp_path / "src.mp4", duration=2.0, fps=20)  # has a 440 Hz track to be replaced
    before = media.read_frames(src, 20)
    sr = 22050
    new = _tones(3 * sr, sr, freqs=(300.0, 700.0))  # longer than the video: must be cut to 2 s
    out = tmp_path / "muxed.mp4"
    media.mux_audio(src, new, sr, out)

    info = media.probe(out)
    assert len(info.audio) == 1 and info.audio[0].sample_rate == sr
    got = media.read_audio(out, sr)
    assert abs(len(got) - 2 * sr) <= sr // 100
    n = min(len(got), 2 * sr)
    assert np.corrcoef(got[1000 : n - 1000], new[1000 : n - 1000])[0, 1] > 0.95
    np.testing.assert_array_equal(media.read_frames(out, 20), before)  # video stream copied, not re-encoded

    media.mux_audio(out, new[: sr // 2], sr, out)  # in place, and a short track is padded with silence
    got = media.read_audio(out, sr)
    assert abs(len(got) - 2 * sr) <= sr // 100
    assert np.abs(got[sr:]).max() < 0.01
    assert not list(tmp_path.glob(".*.tmp"))


def test_write_video_multichannel_audio(tmp_path):
    path = tmp_path / "stereo.mp4"
    sr = 16000
    stereo = np.stack([_tones(sr, sr), -_tones(sr, sr) * 0.5])
    media.write_video(path, _gradient_frames(10, 16, 16), 10, stereo, sr)
    assert media.probe(path).audio[0].channels == 2
    assert media.read_audio(path, sr).shape == (sr,)


def test_write_video_rejects_odd_sizes_and_bad_input(tmp_path):
    with pytest.raises(ValueError, match="even"):
        media.write_video(tmp_path / "odd.mp4", np.zeros((4, 17, 33, 3), np.uint8), 10)
    with pytest.raises(ValueError, match="uint8"):
        media.write_video(tmp_path / "f.mp4", np.zeros((4, 16, 16, 3), np.float32), 10)
    with pytest.raises(ValueError, match="sample_rate"):
        media.write_video(tmp_path / "a.mp4", np.zeros((4, 16, 16, 3), np.uint8), 10, np.zeros(100))
    assert not list(tmp_path.iterdir())


def test_write_video_failure_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "out.mp4"
    monkeypatch.setattr(writing, "_X264_PRESET", "no-such-preset")  # x264 refuses to open: ffmpeg fails
    with pytest.raises(MediaError) as err:
        media.write_video(target, np.zeros((4, 16, 16, 3), np.uint8), 10, np.zeros(400, np.float32), 100)
    assert str(target) in str(err.value)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------------------
# Bad and odd media
# --------------------------------------------------------------------------------------------------------

_USABLE_CHECKS = {
    "odd_33x17.mkv": lambda info, path: media.read_frames(path, 10, max_frames=3).shape == (3, 17, 33, 3),
    "portrait_48x96.mp4": lambda info, path: (
        (info.width, info.height) == (48, 96)
        and media.read_frames(path, 10, max_frames=2).shape == (2, 96, 48, 3)
    ),
    "rotated.mp4": lambda info, path: (
        (info.width, info.height) == (32, 64)
        and media.read_frames(path, 10, max_frames=2).shape == (2, 64, 32, 3)
    ),
    "six_channels_48k.mp4": lambda info, path: (
        info.audio[0].channels == 6 and info.audio[0].sample_rate == 48000
    ),
    "audio_8k.mp4": lambda info, path: info.audio[0].sample_rate == 8000,
    "vfr.mp4": lambda info, path: media.read_frames(path, 20, duration=2.5).shape[0] == 50,
}


def _assert_names_file(err: MediaError, path: Path) -> None:
    assert err.path == str(path) and str(path) in str(err)
    assert err.reason and "\n" not in err.reason


@pytest.mark.parametrize("name, keyword", BAD_MEDIA_CASES.items(), ids=list(BAD_MEDIA_CASES))
def test_bad_media_case(bad_media, name, keyword):
    root, cases = bad_media
    assert cases[name] == keyword
    path = root / name
    if keyword is None:
        info = media.probe(path)
        assert info.has_video and info.has_audio and info.duration >= REQUESTED_DURATION
        decoded = media.verify_decode(path)
        assert decoded.video_end >= REQUESTED_DURATION and decoded.audio_end >= REQUESTED_DURATION
        frames = media.read_frames(path, 10, size=(32, 32), duration=REQUESTED_DURATION)
        audio = media.read_audio(path, 16000, duration=REQUESTED_DURATION)
        assert frames.shape == (20, 32, 32, 3)
        assert audio.shape == (32000,) and np.sqrt(np.mean(audio**2)) > 0.01
        assert _USABLE_CHECKS.get(name, lambda i, p: True)(info, path)
    elif keyword == "unreadable":
        for fn in (media.probe, media.verify_decode, lambda p: media.read_audio(p, 16000)):
            with pytest.raises(MediaError) as err:
                fn(path)
            _assert_names_file(err.value, path)
        with pytest.raises(MediaError):
            media.read_frames(path, 10, size=(8, 8), duration=1.0)
    elif keyword == "truncated":
        assert media.probe(path).has_video  # the faststart header survived the cut
        with pytest.raises(MediaError) as err:
            media.verify_decode(path)
        _assert_names_file(err.value, path)
        assert err.value.reason.startswith("truncated")
        assert len(media.read_frames(path, 10, duration=REQUESTED_DURATION)) < 20  # what decodes, no error
    elif keyword == "corrupt":
        assert media.probe(path).duration >= REQUESTED_DURATION
        with pytest.raises(MediaError) as err:
            media.verify_decode(path)
        _assert_names_file(err.value, path)
        assert err.value.reason.startswith("corrupt")
    elif keyword == "short audio":
        assert media.probe(path).duration >= REQUESTED_DURATION  # only decoding tells
        decoded = media.verify_decode(path)
        assert decoded.video_end >= REQUESTED_DURATION and decoded.audio_end == pytest.approx(1.0, abs=0.07)
        assert len(media.read_audio(path, 16000, duration=REQUESTED_DURATION)) < 17000
    elif keyword == "no audio":
        assert not media.probe(path).has_audio
        with pytest.raises(MediaError, match="no audio stream") as err:
            media.read_audio(path, 16000)
        _assert_names_file(err.value, path)
        assert media.read_frames(path, 10, duration=1.0).shape[0] == 10
    elif keyword == "no video":
        assert not media.probe(path).has_video
        for size in (None, (8, 8)):
            with pytest.raises(MediaError, match="no video stream") as err:
                media.read_frames(path, 10, size=size, duration=1.0)
            _assert_names_file(err.value, path)
    elif keyword == "too short":
        assert media.probe(path).duration < REQUESTED_DURATION
        frames = media.read_frames(path, 10, duration=REQUESTED_DURATION)
        audio = media.read_audio(path, 16000, duration=REQUESTED_DURATION)
        assert len(frames) == 5 and abs(len(audio) - 8000) <= 160  # what exists, never padded out
    else:
        raise AssertionError(f"unknown expected reason {keyword!r}")


def test_decoding_reports_how_far_each_stream_goes(bad_media):
    root, _ = bad_media
    good = media.verify_decode(root / "good.mp4")  # 2.5 s at 20 fps, 16 kHz AAC
    assert good.video_frames == 50
    assert good.video_end == pytest.approx(2.5, abs=1e-3) and good.audio_end == pytest.approx(2.5, abs=1e-3)
    audio_only = media.verify_decode(root / "audio_only.m4a")
    assert audio_only.video_end is None and audio_only.video_frames == 0 and audio_only.audio_end > 2.4


def test_muxer_errors_do_not_fail_a_file_that_decodes(bad_media):
    """The joined VFR file makes ffmpeg log error-level lines while decoding it to the null muxer (the old check's
    criterion); every frame and the audio still decode, and that is what counts."""
    path = bad_media[0] / "joined_vfr.mp4"
    cmd = [
        media.ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-i",
        str(path),
        "-f",
        "null",
        "-",
    ]
    log = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stderr
    assert "non monotonically increasing dts" in log  # the trap is still there in this ffmpeg
    decoded = media.verify_decode(path)
    assert decoded.video_frames == 51 and decoded.video_end > 3.5  # 13 + 38 frames, the second part slowed
    assert decoded.audio_end == pytest.approx(
        2.6, abs=0.05
    )  # the two 1.25 s tracks, with their encoder delay


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(MediaError, match="no such file"):
        media.probe(tmp_path / "nope.mp4")
    with pytest.raises(MediaError, match="is a directory"):
        media.verify_decode(tmp_path)


# --------------------------------------------------------------------------------------------------------
# The binary, time-outs, the stderr parser
# --------------------------------------------------------------------------------------------------------


def test_ffmpeg_override(monkeypatch, tmp_path, flash_clip):
    monkeypatch.setenv(media.FFMPEG_ENV, str(tmp_path / "no" / "ffmpeg"))
    with pytest.raises(MediaError, match=media.FFMPEG_ENV) as err:
        media.probe(flash_clip[0])
    assert isinstance(err.value, media.FFmpegNotFoundError)

    monkeypatch.delenv(media.FFMPEG_ENV)
    real = media.ffmpeg_exe()
    (tmp_path / "bin").mkdir()
    os.symlink(real, tmp_path / "bin" / "my-ffmpeg")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(media.FFMPEG_ENV, "my-ffmpeg")  # a name is looked up on PATH
    assert media.ffmpeg_exe() == str(tmp_path / "bin" / "my-ffmpeg")
    assert media.probe(flash_clip[0]).has_video


def test_timeouts(flash_clip, tmp_path, monkeypatch):
    path = flash_clip[0]
    with pytest.raises(MediaError, match="timed out") as err:
        media.verify_decode(path, timeout=1e-3)
    _assert_names_file(err.value, path)
    with pytest.raises(MediaError, match="timed out"):
        media.read_frames(path, 25, size=(32, 32), duration=3.0, timeout=1e-3)
    # A binary that hangs: the streaming reader must kill it rather than wait for it.
    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nexec sleep 30\n")
    hang.chmod(hang.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv(media.FFMPEG_ENV, str(hang))
    with pytest.raises(MediaError, match="timed out"):
        list(media.iter_frames(path, 25, size=(8, 8), timeout=0.3))
    with pytest.raises(MediaError, match="timed out"):
        media.probe(path, timeout=0.3)


_STDERR = """Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'file:/x/a.m4v':
  Duration: 01:02:03.50, start: 0.000000, bitrate: 500 kb/s
  Stream #0:0[0x1](eng): Video: mjpeg (Baseline), yuvj420p(pc, bt470bg/unknown/unknown), 300x300, 90k tbr, 90k tbn (attached pic)
  Stream #0:1[0x2](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(tv, bt709, progressive), 1920x1080 [SAR 1:1 DAR 16:9], 4000 kb/s, 29.97 fps, 29.97 tbr, 30k tbn (default)
    Side data:
      Display Matrix: rotation of -90.00 degrees
  Stream #0:2(eng): Audio: aac (LC) (mp4a / 0x6134706D), 44100 Hz, 5.1(side), fltp, 384 kb/s
  Stream #0:3(jpn): Audio: opus, 48000 Hz, 2 channels, fltp
  Stream #0:4: Subtitle: mov_text (tx3g / 0x67337874), 0 kb/s
At least one output file must be specified
"""


def test_probe_parser_on_canned_output():
    info = _parse_probe("a.m4v", _STDERR)
    assert info.duration == pytest.approx(3723.5)
    assert info.video_codec == "h264"  # cover art skipped
    assert (info.width, info.height) == (1080, 1920)  # rotated for display
    assert info.fps == pytest.approx(29.97)
    assert info.audio == (
        media.AudioStream(index=2, codec="aac", sample_rate=44100, channels=6),
        media.AudioStream(index=3, codec="opus", sample_rate=48000, channels=2),
    )
    no_dur = _parse_probe(
        "b", "  Duration: N/A, bitrate: N/A\n  Stream #0:0: Video: vp9, yuv420p, 64x48, 30k tbr\n"
    )
    assert no_dur.duration is None and no_dur.fps == 30000.0 and no_dur.audio == ()
