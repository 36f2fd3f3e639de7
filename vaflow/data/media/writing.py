"""Writing: encode frames and audio into an mp4, or put new audio on a video; both write atomically."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import uuid

import ffmpeg
import numpy as np

from vaflow.data.media.probing import video_duration
from vaflow.data.media.process import (
    _READ_CHUNK_FRAMES,
    MediaError,
    _base_cmd,
    _check_readable,
    _decode_failure_reason,
    _ff_path,
    _first_error,
    _Pipe,
    _run,
)

__all__ = ["MP4_VIDEO_CODECS", "mp4_holds", "mux_audio", "write_video"]

# write_video: libx264 preset. Clips here are small and many (the synthetic world writes thousands on two
# cores), so speed matters more than the last few percent of bit rate.
_X264_PRESET = "veryfast"


def _audio_to_interleaved(audio: np.ndarray, n_samples: int) -> tuple[np.ndarray, int]:
    """(N,) or (C, N) float audio -> (n_samples, C) float32 in [-1, 1], cut or zero-padded at the end."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[0] < 1 or audio.shape[0] > 8:
        raise ValueError(f"audio must be (N,) or (C, N) with 1 <= C <= 8, got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or Inf")
    channels = audio.shape[0]
    out = np.zeros((n_samples, channels), np.float32)
    n = min(n_samples, audio.shape[1])
    out[:n] = np.clip(audio[:, :n], -1.0, 1.0).T
    return out, channels


def _temp_sibling(path: str | os.PathLike) -> str:
    # Same directory as the target, so os.replace is an atomic rename on one file system.
    path = os.path.abspath(os.fspath(path))
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")


def _write_raw_audio(tmpdir: str, audio: np.ndarray) -> str:
    raw = os.path.join(tmpdir, "audio.f32le")
    audio.astype("<f4").tofile(raw)
    return raw


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    crf: int = 23,
    timeout: float = 300.0,
) -> None:
    """Encode frames (T, H, W, 3) uint8 RGB, and optionally audio, into an mp4 (H.264 yuv420p + AAC).

    Args:
        frames: (T, H, W, 3) uint8; H and W must be even (yuv420p halves the chroma planes).
        fps: frame rate; the video lasts T / fps seconds.
        audio: (N,) or (C, N) float in [-1, 1] (clipped) at `sample_rate`; cut or zero-padded at the end
            to round(T / fps * sample_rate) samples so both tracks last as long.
        crf: x264 quality (lower is better, 23 is x264's default).

    The file is written under a temporary name in the same directory and renamed into place, with the
    moov atom first (+faststart). The container is mp4 whatever the suffix of `path`.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    n_frames, height, width, _ = frames.shape
    if n_frames == 0:
        raise ValueError(f"{path}: no frames to write")
    if height % 2 or width % 2:
        raise ValueError(
            f"{path}: H.264 yuv420p needs even frame sizes, got height={height}, width={width}; crop or resize"
        )
    if fps <= 0:
        raise ValueError(f"{path}: fps must be positive, got {fps}")
    if audio is not None and not sample_rate:
        raise ValueError(f"{path}: audio given without sample_rate")

    tmp_out = _temp_sibling(path)
    with tempfile.TemporaryDirectory(prefix="vaflow-media-") as tmpdir:
        video_in = ffmpeg.input(
            "pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=fps
        )
        streams = [video_in.video]
        if audio is not None:
            samples, channels = _audio_to_interleaved(audio, round(n_frames / fps * sample_rate))
            raw = _write_raw_audio(tmpdir, samples)
            streams.append(
                ffmpeg.input(_ff_path(raw), format="f32le", ar=int(sample_rate), ac=channels).audio
            )
        out_args = {
            "format": "mp4",
            "vcodec": "libx264",
            "pix_fmt": "yuv420p",
            "crf": crf,
            "preset": _X264_PRESET,
            "movflags": "+faststart",
        }
        if audio is not None:
            out_args["acodec"] = "aac"
        cmd = ffmpeg.output(*streams, _ff_path(tmp_out), **out_args).compile(cmd=_base_cmd("error") + ["-y"])
        pipe = _Pipe(cmd, path, timeout, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            try:
                data = np.ascontiguousarray(frames)
                for i in range(0, n_frames, _READ_CHUNK_FRAMES):
                    pipe.proc.stdin.write(memoryview(data[i : i + _READ_CHUNK_FRAMES]).cast("B"))
                pipe.proc.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg died (or was killed on time-out); finish() reports why
            pipe.finish()
            os.replace(tmp_out, path)
        finally:
            pipe.close()
            if os.path.exists(tmp_out):
                os.remove(tmp_out)


# Video codecs an mp4 holds as they are: `mux_audio` copies these streams and re-encodes any other.
MP4_VIDEO_CODECS = frozenset({"h264", "hevc", "av1", "vp9", "mpeg4", "mpeg2video", "mpeg1video", "mjpeg"})


def mp4_holds(codec: str | None) -> bool:
    """Whether `mux_audio` can copy a video stream of `codec` (as `MediaInfo.video_codec` names it)."""
    return (codec or "").split(" ")[0] in MP4_VIDEO_CODECS


def mux_audio(
    video_path: str | os.PathLike,
    audio: np.ndarray,
    sample_rate: int,
    out_path: str | os.PathLike,
    timeout: float = 300.0,
    reencode: bool = False,
) -> None:
    """Put `audio` on the video of `video_path` and write `out_path` (mp4): video copied, audio AAC.

    Args:
        audio: (N,) or (C, N) float in [-1, 1] at `sample_rate`; cut or zero-padded at the end to the video
            stream's duration. Any audio track of the input is dropped.
        reencode: encode the video as H.264 instead of copying it, for a codec an mp4 cannot hold (not in
            `MP4_VIDEO_CODECS`: ProRes, GIF, ...); odd sizes lose their last row or column (yuv420p).

    Atomic (temporary sibling, then rename); `out_path` may equal `video_path`.
    """
    _check_readable(video_path)
    if sample_rate <= 0:
        raise ValueError(f"{out_path}: sample_rate must be positive, got {sample_rate}")
    video_seconds = video_duration(video_path, timeout)
    samples, channels = _audio_to_interleaved(audio, round(video_seconds * sample_rate))
    tmp_out = _temp_sibling(out_path)
    with tempfile.TemporaryDirectory(prefix="vaflow-media-") as tmpdir:
        raw = _write_raw_audio(tmpdir, samples)
        video = ffmpeg.input(_ff_path(video_path))["V:0"]
        sound = ffmpeg.input(_ff_path(raw), format="f32le", ar=int(sample_rate), ac=channels).audio
        out_args = {"format": "mp4", "vcodec": "copy", "acodec": "aac", "movflags": "+faststart"}
        if reencode:
            video = video.filter("scale", "trunc(iw/2)*2", "trunc(ih/2)*2")
            out_args |= {"vcodec": "libx264", "pix_fmt": "yuv420p", "crf": 18, "preset": _X264_PRESET}
        cmd = ffmpeg.output(video, sound, _ff_path(tmp_out), **out_args).compile(
            cmd=_base_cmd("error") + ["-y"]
        )
        try:
            _, err, rc = _run(cmd, out_path, timeout)
            if rc != 0:
                raise MediaError(out_path, "mux failed: " + _first_error(err), err)
            os.replace(tmp_out, out_path)
        finally:
            if os.path.exists(tmp_out):
                os.remove(tmp_out)
