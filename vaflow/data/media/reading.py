"""Reading: video frames at a constant rate and mono audio, on one clock, streamed through a pipe."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ffmpeg
import numpy as np

from vaflow.data.media.probing import probe
from vaflow.data.media.process import (
    _READ_CHUNK_FRAMES,
    MediaError,
    _base_cmd,
    _check_readable,
    _decode_failure_reason,
    _ff_path,
    _Pipe,
    _run,
)

__all__ = ["iter_frames", "read_audio", "read_av", "read_frames"]

# read_frames with neither `duration` nor `max_frames` refuses videos whose frames would take more memory
# than this, instead of growing without bound; iter_frames streams any length.
_UNBOUNDED_READ_BYTES = 1 << 30

# Seeking: ffmpeg is asked to seek (`-ss` before `-i`: jump to a key frame, decode, drop what precedes)
# only to a point `_SEEK_PREROLL` before `start`, and the exact trim to `start` is done after decoding
# (the fps filter's start_time for video, output-side `-ss` for audio). Two reasons:
# - video: an input seek to `start` drops the frame on screen at `start` when it began slightly earlier,
#   so frame 0 would show the next picture;
# - audio: an input seek that lands inside the first AAC frame (1024 samples after the encoder priming)
#   makes ffmpeg 9 drop that frame *and* shift the rest 1024 samples early (seen with H.264 streams
#   without B-frames), breaking A/V sync. Input seeks therefore never land before `_MIN_INPUT_SEEK`.
_SEEK_PREROLL = 1.0
_MIN_INPUT_SEEK = 0.5
# The resampler may end a window a few samples short; padding that much with zeros is not "padding data".
_AUDIO_PAD_TOLERANCE_S = 1e-3
# read_av's audio goes through a file: in memory where the system has a RAM disk.
_SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _input_seek(start: float) -> float:
    """Where to seek the input (0: do not seek) for a read from `start`; see _SEEK_PREROLL."""
    return start - _SEEK_PREROLL if start - _SEEK_PREROLL >= _MIN_INPUT_SEEK else 0.0


@dataclass(frozen=True)
class _FrameRequest:
    """A resolved read_frames/iter_frames call: its ffmpeg output, the frame geometry, how many frames to expect."""

    output: Any  # ffmpeg-python output node writing the frames to stdout
    height: int
    width: int
    expected: int | None  # exactly this many frames when the source covers the window; None: open-ended

    @property
    def frame_bytes(self) -> int:
        return self.height * self.width * 3

    @property
    def cmd(self) -> list[str]:
        return self.output.compile(cmd=_base_cmd("error"))


def _frame_request(
    path: str | os.PathLike,
    fps: float,
    size: tuple[int, int] | None,
    start: float,
    duration: float | None,
    max_frames: int | None,
    decoder_threads: int = 0,
) -> _FrameRequest:
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if start < 0 or (duration is not None and duration <= 0):
        raise ValueError(f"need start >= 0 and duration > 0, got start={start}, duration={duration}")
    _check_readable(path)
    if size is None:
        info = probe(path)
        if not info.has_video:
            raise MediaError(path, "no video stream")
        height, width = info.height, info.width
    else:
        height, width = size
        if height <= 0 or width <= 0:
            raise ValueError(f"size must be (height, width) > 0, got {size}")

    # Seek on the input to a point before `start` and let the fps filter trim to `start` (see _SEEK_PREROLL):
    # seeking straight to `start` would drop the frame on screen at `start` when it began a little earlier.
    input_seek = _input_seek(start)
    offset = round(start - input_seek, 9)
    input_args = {"ss": repr(input_seek)} if input_seek > 0 else {}
    if duration is not None:
        input_args["t"] = repr(offset + float(duration))
    if decoder_threads:
        input_args["threads"] = decoder_threads
    stream = ffmpeg.input(_ff_path(path), **input_args)["V:0"]  # "V": video, but not cover art
    # Output frame k shows the input frame nearest to start + k / fps; start_time also fills the first slots
    # with the first frame when the stream begins a little after `start`, so indices stay on the audio clock.
    stream = stream.filter("fps", fps=fps, start_time=offset)
    if size is not None:
        # Bicubic both ways: swscale widens the kernel when down-scaling, so large reductions do not alias.
        stream = stream.filter("scale", width, height, flags="bicubic")

    expected = round(duration * fps) if duration is not None else None
    if max_frames is not None:
        expected = min(expected, max_frames) if expected is not None else max_frames
    # passthrough: the fps filter already made the rate constant, and the default (cfr) output sync would
    # add duplicates to fill from t=0 up to the first frame's time stamp, start_time.
    out_args = {"format": "rawvideo", "pix_fmt": "rgb24", "fps_mode": "passthrough"}
    if expected is not None:
        out_args["frames:v"] = expected  # the fps filter may emit one frame past the window at EOF
    return _FrameRequest(ffmpeg.output(stream, "pipe:", **out_args), height, width, expected)


def read_frames(
    path: str | os.PathLike,
    fps: float,
    size: tuple[int, int] | None = None,
    start: float = 0.0,
    duration: float | None = None,
    timeout: float = 120.0,
    max_frames: int | None = None,
) -> np.ndarray:
    """Decode video frames at a constant rate: (T, H, W, 3) uint8 RGB.

    Args:
        fps: output frame rate; the `fps` filter resamples any (also variable) input rate by repeating or
            dropping frames, frame k showing time `start + k / fps`.
        size: (height, width) to resize to exactly (aspect ratio not kept), or None for the decoded size.
        start, duration: the time window in seconds. With a duration, T = round(duration * fps) when the
            source covers the window. When ffmpeg ends the window one frame short (its rounding at end of
            stream) the last frame is repeated once; when the source is shorter than that, fewer frames are
            returned: the caller decides whether a short clip is acceptable.
        max_frames: at most this many frames.
        timeout: seconds ffmpeg may take.

    Without duration and max_frames, a video whose frames would exceed 1 GiB raises MediaError rather
    than filling memory; use iter_frames to stream long videos. Decode errors that ffmpeg survives (a
    truncated file) yield the frames that decoded: run verify_decode to vet a file.
    """
    req = _frame_request(path, fps, size, start, duration, max_frames)
    cap = req.expected
    unbounded = cap is None
    if unbounded:
        cap = max(1, _UNBOUNDED_READ_BYTES // req.frame_bytes)
    # Grow the buffer by chunks rather than preallocating `cap` frames: an open-ended read of a short clip
    # must not reserve the whole 1 GiB.
    chunks: list[np.ndarray] = []
    total = 0
    pipe = _Pipe(req.cmd, path, timeout, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        while total <= cap:
            n = min(_READ_CHUNK_FRAMES, cap + 1 - total)  # one past the cap detects "longer than the cap"
            buf = np.empty((n, req.height, req.width, 3), np.uint8)
            got = pipe.read_into(memoryview(buf).cast("B")) // req.frame_bytes
            chunks.append(buf[:got])
            total += got
            if got < n:
                break
        if unbounded and total > cap:
            raise MediaError(
                path,
                f"video longer than {cap} frames at this size; pass duration or max_frames, or use iter_frames",
            )
        pipe.finish()
    finally:
        pipe.close()
    frames = np.concatenate(chunks) if chunks else np.empty((0, req.height, req.width, 3), np.uint8)
    return _end_of_stream(frames, req, fps, duration)


def _end_of_stream(frames: np.ndarray, req: _FrameRequest, fps: float, duration: float | None) -> np.ndarray:
    """ffmpeg's end-of-stream rounding (read_frames' docstring): a window one frame short repeats its last."""
    window = round(duration * fps) if duration is not None else None
    if req.expected == window and window is not None and len(frames) == window - 1 and len(frames):
        frames = np.concatenate([frames, frames[-1:]])
    return frames


def iter_frames(
    path: str | os.PathLike,
    fps: float,
    size: tuple[int, int] | None = None,
    start: float = 0.0,
    duration: float | None = None,
    timeout: float = 120.0,
    chunk: int = 64,
) -> Iterator[np.ndarray]:
    """Stream frames as (t, H, W, 3) uint8 chunks, t <= chunk; same timing and size rules as read_frames.

    Memory is one chunk whatever the video's length. `timeout` bounds the time spent waiting for ffmpeg,
    not the time the caller spends on each chunk. Closing the generator early stops ffmpeg. No padding
    happens here: with a duration the chunks hold at most round(duration * fps) frames.
    """
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    req = _frame_request(path, fps, size, start, duration, None)
    pipe = _Pipe(req.cmd, path, timeout, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        while True:
            buf = np.empty((chunk, req.height, req.width, 3), np.uint8)
            got = pipe.read_into(memoryview(buf).cast("B")) // req.frame_bytes
            if got:
                pipe.pause()
                yield buf[:got]
                pipe.resume()
            if got < chunk:
                break
        pipe.finish()
    finally:
        pipe.close()


def _audio_output(
    path: str | os.PathLike,
    sample_rate: int,
    start: float,
    duration: float | None,
    target: str,
    decoder_threads: int = 0,
) -> Any:
    """The ffmpeg output of read_audio writing mono float32 samples to `target` (checked arguments)."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if start < 0 or (duration is not None and duration <= 0):
        raise ValueError(f"need start >= 0 and duration > 0, got start={start}, duration={duration}")
    _check_readable(path)
    input_seek = _input_seek(start)  # see _SEEK_PREROLL
    input_args: dict = {"ss": repr(input_seek)} if input_seek > 0 else {}
    if decoder_threads:
        input_args["threads"] = decoder_threads
    out_args: dict = {"format": "f32le", "ac": 1, "ar": int(sample_rate)}
    if start - input_seek > 0:
        out_args["ss"] = repr(round(start - input_seek, 9))
    if duration is not None:
        out_args["t"] = repr(float(duration))
    stream = ffmpeg.input(_ff_path(path), **input_args)["a:0"]
    return ffmpeg.output(stream, target, **out_args)


def _audio_samples(raw: bytes, sample_rate: int, duration: float | None) -> np.ndarray:
    """ffmpeg's f32le output -> (N,) float32 cut to the window, a resampler's shortfall of ≤ 1 ms zero-padded."""
    audio = np.frombuffer(raw, dtype="<f4").astype(np.float32)  # copy: frombuffer views are read-only
    if duration is not None:
        want = round(duration * sample_rate)
        audio = audio[:want]
        short = want - len(audio)
        if 0 < short <= max(1, round(_AUDIO_PAD_TOLERANCE_S * sample_rate)) and len(audio):
            audio = np.concatenate([audio, np.zeros(short, np.float32)])
    return audio


def read_audio(
    path: str | os.PathLike,
    sample_rate: int,
    start: float = 0.0,
    duration: float | None = None,
    timeout: float = 120.0,
) -> np.ndarray:
    """Decode the first audio stream, down-mixed to mono and resampled: (N,) float32.

    Down-mixing is ffmpeg's default matrix (`-ac 1`). With a duration, N = round(duration * sample_rate)
    when the source covers [start, start + duration] (a shortfall of at most 1 ms from the resampler's edge
    is zero-padded); a shorter source gives fewer samples and the caller decides. Sample n is at time
    start + n / sample_rate, on the same clock as read_frames.
    """
    cmd = _audio_output(path, sample_rate, start, duration, "pipe:").compile(cmd=_base_cmd("error"))
    out, err, rc = _run(cmd, path, timeout)
    if rc != 0:
        raise MediaError(path, _decode_failure_reason(err), err)
    return _audio_samples(out, sample_rate, duration)


def read_av(
    path: str | os.PathLike,
    fps: float,
    size: tuple[int, int],
    sample_rate: int,
    start: float,
    duration: float,
    timeout: float = 120.0,
) -> tuple[np.ndarray, np.ndarray]:
    """`read_frames(path, fps, size, start, duration)` and `read_audio(path, sample_rate, start, duration)` from one
    ffmpeg process: (frames (T, H, W, 3) uint8, audio (N,) float32), equal to the two reads.

    The file is opened twice inside that process, each opening seeking as its own read does, so both outputs keep
    their timing rules; frames come through stdout, samples through a file in a temporary folder. Each decoder runs
    on one thread (the same output as more): callers decode several clips at once instead.
    """
    req = _frame_request(path, fps, size, start, duration, None, decoder_threads=1)
    with tempfile.TemporaryDirectory(prefix="vaflow-av-", dir=_SCRATCH) as tmp:
        target = os.path.join(tmp, "audio.f32")
        sound = _audio_output(path, sample_rate, start, duration, target, decoder_threads=1)
        cmd = ffmpeg.merge_outputs(req.output, sound).compile(cmd=_base_cmd("error"))
        out, err, rc = _run(cmd, path, timeout)
        if rc != 0:
            raise MediaError(path, _decode_failure_reason(err), err)
        with open(target, "rb") as f:
            raw = f.read()
    got = len(out) // req.frame_bytes
    frames = np.frombuffer(out, np.uint8, got * req.frame_bytes).reshape(got, req.height, req.width, 3).copy()
    return _end_of_stream(frames, req, fps, duration), _audio_samples(raw, sample_rate, duration)
