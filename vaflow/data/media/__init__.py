"""Media I/O: probe, decode and encode audio-visual files with the ffmpeg binary.

In full: docs/library.md, `vaflow.data.media`.
"""

from vaflow.data.media.probing import AudioStream, Decoded, MediaInfo, check_video, probe, verify_decode, video_duration
from vaflow.data.media.process import FFMPEG_ENV, FFmpegNotFoundError, MediaError, ffmpeg_exe
from vaflow.data.media.reading import iter_frames, read_audio, read_av, read_frames
from vaflow.data.media.writing import MP4_VIDEO_CODECS, mp4_holds, mux_audio, write_video

__all__ = [
    "AudioStream",
    "Decoded",
    "FFMPEG_ENV",
    "FFmpegNotFoundError",
    "MediaError",
    "MP4_VIDEO_CODECS",
    "MediaInfo",
    "check_video",
    "ffmpeg_exe",
    "iter_frames",
    "mp4_holds",
    "mux_audio",
    "probe",
    "read_audio",
    "read_av",
    "read_frames",
    "verify_decode",
    "video_duration",
    "write_video",
]
