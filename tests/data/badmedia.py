"""Builders of good and bad media files for tests (a helper module, not a test file).

`make_bad_media(root)` writes a folder of broken and odd clips, each made by the ffmpeg binary from lavfi
sources in a fraction of a second, and says which ones a data stage must accept and why it must reject the
others. `make_clip` writes one normal clip.

Expected reasons are keywords, not ffmpeg messages: "unreadable", "truncated", "corrupt", "no audio", "no video",
"too short", "short audio" (both judged against `REQUESTED_DURATION`; the second only by decoding: the container
lasts long enough). None means "usable": probing and decoding succeed and read_frames / read_audio at any
requested size and rate give a full window.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from vaflow.data.media import ffmpeg_exe

# Clip length a stage would ask for when it judges "too short"; every usable file here lasts longer.
REQUESTED_DURATION = 2.0
CLIP_DURATION = 2.5

_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


def _ffmpeg(*args: str) -> None:
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"building test media failed: {' '.join(cmd)}\n{proc.stderr}")


def make_clip(
    path: str | Path,
    duration: float = CLIP_DURATION,
    size: tuple[int, int] = (64, 64),
    fps: float = 20,
    sample_rate: int = 16000,
    channels: int = 1,
    *,
    video: bool = True,
    audio: bool = True,
    vcodec: str = "libx264",
    pix_fmt: str = "yuv420p",
    acodec: str = "aac",
    faststart: bool = True,
    audio_duration: float | None = None,
) -> Path:
    """Write a clip of `testsrc2` video (size = (height, width)) and a 440 Hz tone; return its path.

    The container follows the suffix (.mp4, .m4a, .mkv, .avi, ...). x264 "veryfast" uses B-frames, like
    most real H.264 files, so time stamps start with a composition offset. `audio_duration`: a shorter (or
    longer) audio track than the video's `duration`.
    """
    path = Path(path)
    height, width = size
    args: list[str] = []
    maps: list[str] = []
    if video:
        # testsrc2 rounds odd sizes down, so generate a larger frame and scale to the exact size; setsar=1
        # keeps pixels square (scale would otherwise stretch the sample aspect to keep the picture's).
        args += ["-f", "lavfi", "-i", f"testsrc2=size=128x128:rate={fps}:duration={duration}"]
        maps += [
            "-map",
            "0:v",
            "-vf",
            f"scale={width}:{height},setsar=1",
            "-c:v",
            vcodec,
            "-pix_fmt",
            pix_fmt,
        ]
        if vcodec == "libx264":
            maps += ["-preset", "veryfast"]
    if audio:
        layout = _LAYOUTS[channels]
        seconds = duration if audio_duration is None else audio_duration
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={sample_rate}:duration={seconds}"]
        maps += ["-map", f"{1 if video else 0}:a", "-af", f"aformat=channel_layouts={layout}", "-c:a", acodec]
    if faststart and path.suffix in (".mp4", ".m4a", ".mov"):
        maps += ["-movflags", "+faststart"]
    _ffmpeg(*args, *maps, str(path))
    return path


def _make_vfr(path: Path) -> None:
    # 1.25 s at 10 fps then 1.25 s at 30 fps, kept variable (-fps_mode vfr): a phone-like VFR file.
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=64x64:rate=10:duration=1.25",
        "-f", "lavfi", "-i", "testsrc2=size=64x64:rate=30:duration=1.25",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=16000:duration={CLIP_DURATION}",
        "-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0[v]",
        "-map", "[v]", "-map", "2:a", "-fps_mode", "vfr", "-video_track_timescale", "90000",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path),
    )  # fmt: skip


def _make_joined_vfr(path: Path) -> None:
    # A 10 fps part and a 30 fps part joined without re-encoding, as a user would join them. Each part keeps its mp4
    # time base (10240 and 15360 ticks/s), so the joined video is variable-rate, its second part slowed, and ffmpeg's
    # null muxer logs "non monotonically increasing dts" although every frame decodes. Container 3.98 s, audio 2.6 s.
    parts = [
        make_clip(path.with_name(f"{path.stem}.part{fps}.mp4"), duration=1.25, fps=fps) for fps in (10, 30)
    ]
    listing = path.with_name(f"{path.stem}.concat.txt")
    listing.write_text("".join("file '{}'\n".format(str(p).replace("'", "'\\''")) for p in parts))
    _ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(path))
    for tmp in (*parts, listing):
        tmp.unlink()


def _corrupt(src: Path, dst: Path) -> None:
    # 2000 bytes of the media data, a third into a faststart file (past its index), XOR-ed: probes fine, decoders fail.
    data = bytearray(src.read_bytes())
    start = len(data) // 3
    data[start : start + 2000] = bytes(b ^ 0x5A for b in data[start : start + 2000])
    dst.write_bytes(bytes(data))


# {file name: None if usable, else the reason keyword}: what make_bad_media writes and what to expect of it.
BAD_MEDIA_CASES: dict[str, str | None] = {
    "good.mp4": None,
    "empty.mp4": "unreadable",  # zero bytes
    "text.mp4": "unreadable",  # a text file with a video suffix
    "truncated.mp4": "truncated",  # a faststart clip cut to 60 % of its bytes: probes fine, fails to decode
    "no_audio.mp4": "no audio",
    "audio_only.m4a": "no video",
    "short.mp4": "too short",  # 0.5 s < REQUESTED_DURATION
    "odd_33x17.mkv": None,  # odd width and height (x264 4:4:4)
    "vfr.mp4": None,  # 10 fps then 30 fps, variable frame rate
    "joined_vfr.mp4": None,  # a 10 fps and a 30 fps file joined with `-f concat -c copy`: muxer errors, all decodes
    "corrupt.mp4": "corrupt",  # media bytes overwritten mid-file: probes fine, the decoder fails
    "short_audio.mp4": "short audio",  # 2.5 s of video, 1.0 s of audio: the container says 2.5 s
    "six_channels_48k.mp4": None,  # 5.1 at 48 kHz
    "audio_8k.mp4": None,
    "portrait_48x96.mp4": None,  # width 48, height 96
    "rotated.mp4": None,  # 64x32 stream with a 90 degree display matrix: shown 32 wide, 64 high
    "clip é ü.mp4": None,  # non-ASCII name with spaces
}


def make_bad_media(root: str | Path) -> dict[str, str | None]:
    """Write the files of BAD_MEDIA_CASES into `root`; return a copy of BAD_MEDIA_CASES."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)

    make_clip(root / "good.mp4")
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n" * 20)

    # With +faststart the header survives the cut: probing succeeds and only decoding finds the damage.
    full = make_clip(root / "truncated.src.mp4")
    data = full.read_bytes()
    (root / "truncated.mp4").write_bytes(data[: int(len(data) * 0.6)])
    full.unlink()

    make_clip(root / "no_audio.mp4", audio=False)
    make_clip(root / "audio_only.m4a", video=False)
    make_clip(root / "short.mp4", duration=0.5)
    # Odd sizes rule out yuv420p; x264 in 4:4:4 accepts them.
    make_clip(root / "odd_33x17.mkv", size=(17, 33), pix_fmt="yuv444p")
    _make_vfr(root / "vfr.mp4")
    _make_joined_vfr(root / "joined_vfr.mp4")
    _corrupt(root / "good.mp4", root / "corrupt.mp4")
    make_clip(root / "short_audio.mp4", audio_duration=1.0)
    make_clip(root / "six_channels_48k.mp4", sample_rate=48000, channels=6)
    make_clip(root / "audio_8k.mp4", sample_rate=8000)
    make_clip(root / "portrait_48x96.mp4", size=(96, 48))

    # A landscape stream with a display matrix, as phones write: ffmpeg decodes it upright (portrait).
    src = make_clip(root / "rotated.src.mp4", size=(32, 64))
    _ffmpeg("-display_rotation", "90", "-i", str(src), "-c", "copy", str(root / "rotated.mp4"))
    src.unlink()

    make_clip(root / "clip é ü.mp4")
    assert sorted(p.name for p in root.iterdir()) == sorted(BAD_MEDIA_CASES), "BAD_MEDIA_CASES is out of date"
    return dict(BAD_MEDIA_CASES)
