"""Probing: streams and duration from `ffmpeg -i`, and `verify_decode`, which decodes a file to vet it."""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from dataclasses import dataclass

from vaflow.data.media.process import (
    FFmpegNotFoundError,
    MediaError,
    _base_cmd,
    _check_readable,
    _decode_failure_reason,
    _ff_path,
    _first_error,
    _run,
    ffmpeg_exe,
)

__all__ = ["AudioStream", "Decoded", "MediaInfo", "check_video", "probe", "verify_decode", "video_duration"]

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
    The decoders run on one thread each, so the first error (and its text, which a multi-threaded decoder words after
    how it split the frame) is the same on every run; prepare checks several files at once instead.
    """
    _check_readable(path)
    with tempfile.TemporaryDirectory(prefix="vaflow-decode-") as tmp:
        stats = {kind: os.path.join(tmp, f"{kind}.txt") for kind in "va"}
        cmd = _base_cmd("error") + ["-max_error_rate", "0", "-threads", "1", "-i", _ff_path(path)]
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


def video_duration(path: str | os.PathLike, timeout: float = 300.0) -> float:
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


def check_video(path: str | os.PathLike) -> MediaInfo:
    """`probe(path)` with `duration` that of the video stream (a longer audio track does not count); a one-line
    MediaError "cannot use this video: ..." when it is missing, unreadable, has no video stream or lasts 0 s."""
    try:
        info = probe(path)
        if not info.has_video:
            raise MediaError(path, "it has no video stream")
        info = dataclasses.replace(info, duration=video_duration(path))
    except MediaError as err:
        raise MediaError(err.path, f"cannot use this video: {err.reason}") from None
    if info.duration <= 0:
        raise MediaError(path, "cannot use this video: its duration is zero")
    return info
