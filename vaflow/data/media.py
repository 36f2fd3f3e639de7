"""Media I/O: probe, decode and encode audio-visual files with the ffmpeg binary.

Command lines are built with ffmpeg-python; the binary is imageio-ffmpeg's bundled ffmpeg unless the
environment variable ``VAFLOW_FFMPEG`` names another one (a path, or a name looked up on ``PATH``).
There is no ffprobe: :func:`probe` parses the stream summary that ``ffmpeg -i FILE`` prints on stderr.

Every ffmpeg call runs with a time-out, and every failure raises :class:`MediaError`, whose ``reason`` is a
short one-line phrase for a rejected-clips list and whose message names the file and ends with the tail of
ffmpeg's stderr. Frames are streamed through a pipe in chunks, so memory is bounded by what the caller asks
for, never by the length of the file.

Time conventions: times are seconds from the start of the file as ffmpeg presents it (the container start
time is subtracted), for audio and video alike, so ``read_frames(p, fps, start=s)[k]`` and
``read_audio(p, sr, start=s)[round(k * sr / fps)]`` show the same instant.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import ffmpeg
import numpy as np

__all__ = [
    "AudioStream",
    "Decoded",
    "FFmpegNotFoundError",
    "MediaError",
    "MediaInfo",
    "ffmpeg_exe",
    "iter_frames",
    "mux_audio",
    "probe",
    "read_audio",
    "read_frames",
    "verify_decode",
    "write_video",
]

FFMPEG_ENV = "VAFLOW_FFMPEG"

# How much of ffmpeg's stderr an error message carries: enough to see the real error after ffmpeg's
# follow-up lines ("Error opening input files", "Conversion failed"), short enough for a log line.
_STDERR_TAIL_LINES = 15
_STDERR_TAIL_CHARS = 2000

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

# write_video: libx264 preset. Clips here are small and many (the synthetic world writes thousands on two
# cores), so speed matters more than the last few percent of bit rate.
_X264_PRESET = "veryfast"
_READ_CHUNK_FRAMES = 64

# Channel counts of ffmpeg's named layouts (`ffmpeg -layouts`) that do not spell out a decomposition.
_LAYOUT_CHANNELS = {
    "mono": 1,
    "stereo": 2,
    "downmix": 2,
    "binaural": 2,
    "2.1": 3,
    "3.0": 3,
    "3.0(back)": 3,
    "4.0": 4,
    "quad": 4,
    "quad(side)": 4,
    "3.1": 4,
    "5.0": 5,
    "5.0(side)": 5,
    "4.1": 5,
    "5.1": 6,
    "5.1(side)": 6,
    "6.0": 6,
    "6.0(front)": 6,
    "3.1.2": 6,
    "hexagonal": 6,
    "6.1": 7,
    "6.1(back)": 7,
    "6.1(front)": 7,
    "7.0": 7,
    "7.0(front)": 7,
    "7.1": 8,
    "7.1(wide)": 8,
    "7.1(wide-side)": 8,
    "5.1.2": 8,
    "5.1.2(back)": 8,
    "octagonal": 8,
    "cube": 8,
    "5.1.4": 10,
    "7.1.2": 10,
    "7.1.4": 12,
    "7.2.3": 12,
    "9.1.4": 14,
    "9.1.6": 16,
    "hexadecagonal": 16,
    "22.2": 24,
}


# --------------------------------------------------------------------------------------------------------
# Errors and results
# --------------------------------------------------------------------------------------------------------


class MediaError(RuntimeError):
    """A media file could not be probed, decoded or written.

    ``path`` names the file, ``reason`` is a short one-line phrase (for a "rejected" CSV), ``stderr_tail``
    the last lines ffmpeg printed. ``str(err)`` is ``f"{path}: {reason}"`` followed by that tail.
    """

    def __init__(self, path: str | os.PathLike, reason: str, stderr: str = "") -> None:
        self.path = os.fspath(path)
        self.reason = " ".join(reason.split())  # one line, whatever ffmpeg put in it
        self.stderr_tail = _tail(stderr)
        message = f"{self.path}: {self.reason}"
        if self.stderr_tail:
            message += "\n--- ffmpeg stderr (tail) ---\n" + self.stderr_tail
        super().__init__(message)


class FFmpegNotFoundError(MediaError):
    """The ffmpeg binary itself is missing: a setup problem, not a bad file (stages should not reject on it)."""


@dataclass(frozen=True)
class AudioStream:
    """One audio stream of a file."""

    index: int  # absolute stream index in the container, as in `-map 0:{index}`
    codec: str
    sample_rate: int  # Hz
    channels: int


@dataclass(frozen=True)
class MediaInfo:
    """What `ffmpeg -i` says about a file. Video fields are None without a video stream."""

    path: str
    duration: float | None  # container duration in seconds; None when ffmpeg reports N/A
    video_codec: str | None
    width: int | None  # displayed size: already swapped for a 90/270 degree display rotation,
    height: int | None  # because ffmpeg auto-rotates decoded frames
    fps: float | None  # nominal frame rate ("fps", else "tbr"); for VFR files only an average
    audio: tuple[AudioStream, ...]

    @property
    def has_video(self) -> bool:
        return self.video_codec is not None

    @property
    def has_audio(self) -> bool:
        return len(self.audio) > 0


# --------------------------------------------------------------------------------------------------------
# The binary and subprocess plumbing
# --------------------------------------------------------------------------------------------------------


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: ``$VAFLOW_FFMPEG`` (path or name on PATH) or imageio-ffmpeg's bundled one.

    Raises FFmpegNotFoundError (a MediaError) naming the variable when it points at nothing executable.
    """
    override = os.environ.get(FFMPEG_ENV)
    if override:
        found = shutil.which(override)
        if found is None:
            raise FFmpegNotFoundError(
                override,
                f"{FFMPEG_ENV}={override!r} is not an executable ffmpeg (unset it to use the bundled one)",
            )
        return found
    import imageio_ffmpeg  # local: only needed when no override is set

    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as err:
        raise FFmpegNotFoundError(
            "ffmpeg", f"imageio-ffmpeg has no binary ({err}); set {FFMPEG_ENV}"
        ) from err


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-_STDERR_TAIL_LINES:])[-_STDERR_TAIL_CHARS:]


def _ff_path(path: str | os.PathLike) -> str:
    # "file:" stops ffmpeg from reading a colon as a protocol or a leading "-" as an option.
    return "file:" + os.path.abspath(os.fspath(path))


def _base_cmd(loglevel: str = "error") -> list[str]:
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", loglevel]


def _first_error(stderr: str) -> str:
    """The most telling ffmpeg error line, without its "[demuxer @ 0x...]" prefix, as a short reason."""
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", line).strip() for line in stderr.splitlines()]
    noise = ("misdetection possible", "Last message repeated", "Error opening input file", "Input #")
    lines = [
        line.removeprefix("Error opening input: ")
        for line in lines
        if line and not any(n in line for n in noise)
    ]
    skip = (
        "Error opening input files",
        "Conversion failed",
        "Exiting",
        "Terminating thread",
        "Task finished",
    )
    for line in lines:
        if not line.startswith(skip):
            return line[:160]
    return lines[-1][:160] if lines else "ffmpeg failed"


def _spawn(cmd: list[str], **kwargs) -> subprocess.Popen:
    try:
        return subprocess.Popen(cmd, stderr=subprocess.PIPE, **kwargs)
    except OSError as err:  # the binary vanished or is not executable
        raise FFmpegNotFoundError(cmd[0], f"cannot run ffmpeg ({err}); set {FFMPEG_ENV}") from err


def _run(cmd: list[str], path: str | os.PathLike, timeout: float) -> tuple[bytes, str, int]:
    """Run ffmpeg to completion; return (stdout, stderr, returncode). MediaError on time-out."""
    proc = _spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise MediaError(
            path, f"ffmpeg timed out after {timeout:g} s", err.decode(errors="replace")
        ) from None
    return out, err.decode(errors="replace"), proc.returncode


class _Pipe:
    """A running ffmpeg whose stderr is drained by a thread and which is killed after `timeout` seconds.

    Only time spent inside ffmpeg I/O counts: `pause()` stops the clock while a caller holds a chunk, so a
    slow consumer of iter_frames does not trip the time-out.
    """

    def __init__(
        self, cmd: list[str], path: str | os.PathLike, timeout: float, stdin=None, stdout=None
    ) -> None:
        self.path, self.timeout = path, timeout
        self.proc = _spawn(cmd, stdin=stdin, stdout=stdout)
        self._stderr: collections.deque[bytes] = collections.deque(maxlen=200)
        # Draining stderr in a thread: a full stderr pipe would block ffmpeg while we block on stdout.
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drain.start()
        self._lock = threading.Lock()
        self._used = 0.0  # seconds of running clock before the current resume
        self._since: float | None = time.monotonic()
        self.timed_out = False
        self._done = threading.Event()
        self._watch = threading.Thread(target=self._watchdog, daemon=True)
        self._watch.start()

    def _drain_stderr(self) -> None:
        for line in iter(self.proc.stderr.readline, b""):
            self._stderr.append(line)

    def _elapsed(self) -> float:
        with self._lock:
            return self._used + (time.monotonic() - self._since if self._since is not None else 0.0)

    def _watchdog(self) -> None:
        # Poll often enough that even a tiny time-out is enforced before ffmpeg could finish on its own.
        interval = min(0.05, max(self.timeout / 4, 1e-3))
        while not self._done.wait(interval):
            if self._elapsed() > self.timeout and self.proc.poll() is None:
                self.timed_out = True
                self.proc.kill()
                return

    def pause(self) -> None:
        with self._lock:
            if self._since is not None:
                self._used += time.monotonic() - self._since
                self._since = None

    def resume(self) -> None:
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()

    def stderr(self) -> str:
        self._drain.join(timeout=5)
        return b"".join(self._stderr).decode(errors="replace")

    def read_into(self, buf: memoryview) -> int:
        """Fill `buf` from stdout; return the bytes read (less than len(buf) only at end of stream)."""
        got = 0
        while got < len(buf):
            n = self.proc.stdout.readinto(buf[got:])
            if not n:
                break
            got += n
        return got

    def finish(self) -> str:
        """Wait for exit; return stderr; MediaError on time-out or a non-zero exit."""
        try:
            self.proc.wait(timeout=max(1.0, self.timeout - self._elapsed()))
        except subprocess.TimeoutExpired:
            self.timed_out = True
            self.proc.kill()
            self.proc.wait()
        self._done.set()
        err = self.stderr()
        if self.timed_out:
            raise MediaError(self.path, f"ffmpeg timed out after {self.timeout:g} s", err)
        if self.proc.returncode != 0:
            raise MediaError(self.path, _decode_failure_reason(err), err)
        return err

    def close(self) -> None:
        """Kill ffmpeg if it still runs (early exit of a reader) and release the pipes."""
        self._done.set()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass  # a broken stdin pipe on close: ffmpeg is gone already, nothing to flush


def _decode_failure_reason(stderr: str, default: str = "ffmpeg failed") -> str:
    """A short reason for a failed decode: the missing stream, truncation, or ffmpeg's own first error."""
    if "matches no streams" in stderr:
        if re.search(r"V:0|0:v", stderr):
            return "no video stream"
        if "a:0" in stderr:
            return "no audio stream"
    if "partial file" in stderr:  # the demuxer ran out of bytes that the index promised
        return "truncated: " + _first_error(stderr)
    return f"{default}: " + _first_error(stderr)


def _check_readable(path: str | os.PathLike) -> None:
    # Cheap checks first: their reasons are clearer than what ffmpeg says about the same files.
    if not os.path.exists(path):
        raise MediaError(path, "no such file")
    if os.path.isdir(path):
        raise MediaError(path, "is a directory")
    if os.path.getsize(path) == 0:
        raise MediaError(path, "empty file")


# --------------------------------------------------------------------------------------------------------
# Probing
# --------------------------------------------------------------------------------------------------------

_STREAM_RE = re.compile(r"^\s*Stream #0:(\d+)(?:\[[^\]]*\])?(?:\([^)]*\))?: (\w+): (.*)$")
_DURATION_RE = re.compile(r"Duration: (?:(\d+):(\d+):(\d+(?:\.\d+)?)|N/A)")
_ROTATION_RE = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees", re.IGNORECASE)


def _split_fields(desc: str) -> list[str]:
    """Split a stream description on top-level commas ("yuv420p(tv, bt709)" stays one field)."""
    fields, depth, cur = [], 0, []
    for ch in desc:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            fields.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    fields.append("".join(cur).strip())
    return fields


def _rate(fields: list[str], unit: str) -> float | None:
    for field in fields:
        m = re.fullmatch(rf"(\d+(?:\.\d+)?)(k?) {unit}", field)
        if m:
            return float(m.group(1)) * (1000.0 if m.group(2) else 1.0)
    return None


def _channels(field: str) -> int:
    m = re.match(r"(\d+) channels", field)
    if m:
        return int(m.group(1))
    if field in _LAYOUT_CHANNELS:
        return _LAYOUT_CHANNELS[field]
    m = re.search(r"\(([A-Z0-9+]+)\)", field)  # a custom layout spelled out, e.g. "6 channels (FL+FR+...)"
    if m:
        return len(m.group(1).split("+"))
    return len(field.split("+")) if "+" in field else 0


def _parse_probe(path: str, stderr: str) -> MediaInfo:
    # Only "Input #0" matters; ffmpeg prints nothing after it when no output is given.
    duration = None
    m = _DURATION_RE.search(stderr)
    if m and m.group(1) is not None:
        duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    video: dict | None = None
    audio: list[AudioStream] = []
    current_is_video = False
    for line in stderr.splitlines():
        sm = _STREAM_RE.match(line)
        if sm:
            index, kind, desc = int(sm.group(1)), sm.group(2), sm.group(3)
            fields = _split_fields(desc)
            current_is_video = False
            # Cover art is a one-frame "video" stream; it is not the video of the clip.
            if kind == "Video" and video is None and "(attached pic)" not in desc:
                size = next((f for f in fields if re.match(r"^\d+x\d+\b", f)), None)
                w, h = (int(v) for v in re.match(r"^(\d+)x(\d+)", size).groups()) if size else (None, None)
                fps = _rate(fields, "fps") or _rate(fields, "tbr")
                video = {"codec": fields[0].split()[0], "width": w, "height": h, "fps": fps}
                current_is_video = True
            elif kind == "Audio":
                rate = _rate(fields, "Hz")
                channels = _channels(fields[2]) if len(fields) > 2 else 0
                audio.append(AudioStream(index, fields[0].split()[0], int(rate or 0), channels))
        elif current_is_video and video is not None:
            rm = _ROTATION_RE.search(line)
            if rm and round(float(rm.group(1))) % 180 == 90 and video["width"] is not None:
                video["width"], video["height"] = video["height"], video["width"]
    return MediaInfo(
        path=path,
        duration=duration,
        video_codec=video["codec"] if video else None,
        width=video["width"] if video else None,
        height=video["height"] if video else None,
        fps=video["fps"] if video else None,
        audio=tuple(audio),
    )


def probe(path: str | os.PathLike, timeout: float = 30.0) -> MediaInfo:
    """Streams and duration of a media file, from the summary `ffmpeg -i FILE` prints.

    Raises MediaError for missing, empty, non-media or headerless files (an mp4 cut before its moov atom),
    and for files with neither audio nor video; its reason is the detail ("empty file", ffmpeg's "moov atom
    not found", ...), without a category prefix, which callers add ("unreadable: ..."). A file that probes
    fine can still fail to decode (an mp4 truncated after a faststart header): see verify_decode.
    """
    _check_readable(path)
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", _ff_path(path)]
    _, err, _ = _run(cmd, path, timeout)  # always exits 1: no output file was given
    if "Input #0" not in err:
        raise MediaError(path, _first_error(err), err)
    info = _parse_probe(os.fspath(path), err)
    if not info.has_video and not info.has_audio:
        raise MediaError(path, "no audio or video stream", err)
    return info


@dataclass(frozen=True)
class Decoded:
    """What decoding a file yielded: where its first video and audio streams end (None: no such stream)."""

    video_end: (
        float | None
    )  # seconds, on the readers' clock: the last frame's time plus the frame interval before it
    audio_end: float | None  # seconds: the last audio frame's time plus its samples / sample rate
    video_frames: int


def _decoded_end(stats_file: str) -> tuple[float, int] | None:
    """(end in seconds, frames) from one stream's `-stats_enc_pre` lines "{t} {samp} {tb}"; None: not decoded."""
    if not os.path.exists(stats_file):
        return None
    rows = []
    with open(stats_file) as f:
        for line in f:
            t, samples, tb = line.split()
            if t != "N/A":
                rows.append((float(t), int(samples), tb))
    if not rows:
        return 0.0, 0
    t, samples, tb = rows[-1]
    if samples:  # audio: the encoder's time base is 1 / sample rate
        num, den = (int(v) for v in tb.split("/"))
        return t + samples * num / den, len(rows)
    return t + (t - rows[-2][0] if len(rows) > 1 else 0.0), len(rows)  # video: as long as the frame before


def verify_decode(path: str | os.PathLike, timeout: float = 120.0) -> Decoded:
    """Decode the first video and the first audio stream (the ones the readers use); return how far each got.

    A file is judged by what decoding yields, never by the presence of an error-level log line: ffmpeg's muxers log
    errors about the output (the null muxer's "non monotonically increasing dts" on a VFR file joined with
    `-f concat -c copy`) that say nothing about the file. MediaError:
    - probe's reasons for a file ffmpeg cannot open;
    - "truncated: ..." when the demuxer finds the data ending before its index says ("partial file");
    - "corrupt: <the first error>" when a decoder fails on any packet (`-max_error_rate 0` makes ffmpeg exit 69).
    A file cut cleanly between packets decodes without an error but ends early: callers compare `video_end` and
    `audio_end` with the time they need (prepare: the clip's window). Needs ffmpeg >= 6.1 (`-stats_enc_pre`).
    """
    _check_readable(path)
    with tempfile.TemporaryDirectory(prefix="vaflow-decode-") as tmp:
        stats = {kind: os.path.join(tmp, f"{kind}.txt") for kind in "va"}
        cmd = _base_cmd("error") + ["-max_error_rate", "0", "-i", _ff_path(path)]
        cmd += ["-map", "0:V:0?", "-map", "0:a:0?"]  # V: a video stream that is not cover art
        # Frames as decoded, timed on the file's clock (no frame-rate conversion drops or duplicates any).
        cmd += ["-fps_mode:v", "passthrough", "-enc_time_base:v", "demux"]
        cmd += [
            "-stats_enc_pre:v",
            stats["v"],
            "-stats_enc_pre:a",
            stats["a"],
            "-stats_enc_pre_fmt",
            "{t} {samp} {tb}",
        ]
        _, err, rc = _run([*cmd, "-f", "null", "-"], path, timeout)
        if "Unrecognized option" in err:
            raise FFmpegNotFoundError(
                cmd[0], f"{cmd[0]} lacks options verify_decode needs (ffmpeg >= 6.1)", err
            )
        if "Error opening input" in err:
            raise MediaError(path, _first_error(err), err)
        if "partial file" in err:  # the demuxer ran out of bytes that the index promised
            raise MediaError(path, "truncated: " + _first_error(err), err)
        if rc != 0:
            raise MediaError(path, "corrupt: " + _first_error(err), err)
        video, audio = _decoded_end(stats["v"]), _decoded_end(stats["a"])
    return Decoded(
        video_end=None if video is None else video[0],
        audio_end=None if audio is None else audio[0],
        video_frames=0 if video is None else video[1],
    )


# --------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------


def _input_seek(start: float) -> float:
    """Where to seek the input (0: do not seek) for a read from `start`; see _SEEK_PREROLL."""
    return start - _SEEK_PREROLL if start - _SEEK_PREROLL >= _MIN_INPUT_SEEK else 0.0


@dataclass(frozen=True)
class _FrameRequest:
    """A resolved read_frames/iter_frames call: the command, the frame geometry, how many frames to expect."""

    cmd: list[str]
    height: int
    width: int
    expected: int | None  # exactly this many frames when the source covers the window; None: open-ended

    @property
    def frame_bytes(self) -> int:
        return self.height * self.width * 3


def _frame_request(
    path: str | os.PathLike,
    fps: float,
    size: tuple[int, int] | None,
    start: float,
    duration: float | None,
    max_frames: int | None,
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
    cmd = ffmpeg.output(stream, "pipe:", **out_args).compile(cmd=_base_cmd("error"))
    return _FrameRequest(cmd, height, width, expected)


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
    window = round(duration * fps) if duration is not None else None
    if req.expected == window and window is not None and len(frames) == window - 1 and len(frames):
        frames = np.concatenate([frames, frames[-1:]])  # ffmpeg's end-of-stream rounding, see docstring
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
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if start < 0 or (duration is not None and duration <= 0):
        raise ValueError(f"need start >= 0 and duration > 0, got start={start}, duration={duration}")
    _check_readable(path)
    input_seek = _input_seek(start)  # see _SEEK_PREROLL
    input_args = {"ss": repr(input_seek)} if input_seek > 0 else {}
    out_args: dict = {"format": "f32le", "ac": 1, "ar": int(sample_rate)}
    if start - input_seek > 0:
        out_args["ss"] = repr(round(start - input_seek, 9))
    if duration is not None:
        out_args["t"] = repr(float(duration))
    stream = ffmpeg.input(_ff_path(path), **input_args)["a:0"]
    cmd = ffmpeg.output(stream, "pipe:", **out_args).compile(cmd=_base_cmd("error"))
    out, err, rc = _run(cmd, path, timeout)
    if rc != 0:
        raise MediaError(path, _decode_failure_reason(err), err)
    audio = np.frombuffer(out, dtype="<f4").astype(np.float32)  # copy: frombuffer views are read-only
    if duration is not None:
        want = round(duration * sample_rate)
        audio = audio[:want]
        short = want - len(audio)
        if 0 < short <= max(1, round(_AUDIO_PAD_TOLERANCE_S * sample_rate)) and len(audio):
            audio = np.concatenate([audio, np.zeros(short, np.float32)])
    return audio


# --------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------


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


def _video_stream_duration(path: str | os.PathLike, timeout: float) -> float:
    """Duration of the first video stream alone (the container's may include a longer audio track).

    Lists the stream's packets without decoding (`-c copy -f framecrc`): duration = end of the last
    presented frame minus the first presentation time. ffmpeg's `-progress` time is not used: it reports
    the last *decode* time stamp, one or two frames short for streams with B-frames.
    """
    cmd = _base_cmd("error") + ["-i", _ff_path(path), "-map", "0:V:0", "-c", "copy", "-f", "framecrc", "-"]
    out, err, rc = _run(cmd, path, timeout)
    if rc != 0:
        raise MediaError(path, _decode_failure_reason(err), err)
    text = out.decode(errors="replace")
    tb = re.search(r"^#tb 0: (\d+)/(\d+)", text, re.MULTILINE)
    first, end = None, None
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if line.startswith("#") or len(fields) < 4 or not fields[2].lstrip("-").isdigit():
            continue
        pts, dur = int(fields[2]), int(fields[3])  # framecrc columns: stream, dts, pts, duration, size, crc
        first = pts if first is None else min(first, pts)
        end = pts + dur if end is None else max(end, pts + dur)
    if tb is None or first is None or end <= first:
        raise MediaError(path, "cannot measure the video duration", err)
    return (end - first) * int(tb.group(1)) / int(tb.group(2))


def mux_audio(
    video_path: str | os.PathLike,
    audio: np.ndarray,
    sample_rate: int,
    out_path: str | os.PathLike,
    timeout: float = 300.0,
) -> None:
    """Put `audio` on the video of `video_path` and write `out_path` (mp4): video copied, audio AAC.

    Args:
        audio: (N,) or (C, N) float in [-1, 1] at `sample_rate`; cut or zero-padded at the end to the video
            stream's duration. Any audio track of the input is dropped.

    Atomic (temporary sibling, then rename); `out_path` may equal `video_path`.
    """
    _check_readable(video_path)
    if sample_rate <= 0:
        raise ValueError(f"{out_path}: sample_rate must be positive, got {sample_rate}")
    video_seconds = _video_stream_duration(video_path, timeout)
    samples, channels = _audio_to_interleaved(audio, round(video_seconds * sample_rate))
    tmp_out = _temp_sibling(out_path)
    with tempfile.TemporaryDirectory(prefix="vaflow-media-") as tmpdir:
        raw = _write_raw_audio(tmpdir, samples)
        video = ffmpeg.input(_ff_path(video_path))["V:0"]
        sound = ffmpeg.input(_ff_path(raw), format="f32le", ar=int(sample_rate), ac=channels).audio
        out_args = {"format": "mp4", "vcodec": "copy", "acodec": "aac", "movflags": "+faststart"}
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
