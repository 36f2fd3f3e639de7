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

The modules:

- `process`: the binary (`ffmpeg_exe`, ``$VAFLOW_FFMPEG``), the errors (`MediaError`, `FFmpegNotFoundError`), and
  the subprocess plumbing every call shares: time-outs, stderr draining, chunked pipes.
- `probing`: `probe` → `MediaInfo` (with its `AudioStream`s) from the `ffmpeg -i` summary; `verify_decode` →
  `Decoded`, how far a full decode of the first video and audio streams gets.
- `reading`: `read_frames`, `iter_frames` and `read_audio`, on the clock described above.
- `writing`: `write_video` (H.264 + AAC mp4) and `mux_audio` (new audio on a copied video stream).
"""

from vaflow.data.media.probing import AudioStream, Decoded, MediaInfo, probe, verify_decode
from vaflow.data.media.process import FFMPEG_ENV, FFmpegNotFoundError, MediaError, ffmpeg_exe
from vaflow.data.media.reading import iter_frames, read_audio, read_frames
from vaflow.data.media.writing import mux_audio, write_video

__all__ = [
    "AudioStream",
    "Decoded",
    "FFMPEG_ENV",
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
