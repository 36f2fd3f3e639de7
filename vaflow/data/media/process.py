"""The ffmpeg binary and the processes that run it: the errors, command lines, time-outs and pipes that
probing, reading and writing share."""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import threading
import time

from vaflow.errors import UserError

__all__ = ["FFMPEG_ENV", "FFmpegNotFoundError", "MediaError", "ffmpeg_exe"]

FFMPEG_ENV = "VAFLOW_FFMPEG"

# How much of ffmpeg's stderr an error message carries: enough to see the real error after ffmpeg's
# follow-up lines ("Error opening input files", "Conversion failed"), short enough for a log line.
_STDERR_TAIL_LINES = 15
_STDERR_TAIL_CHARS = 2000

# Frames per chunk when piping raw frames out of ffmpeg (the readers) or into it (write_video).
_READ_CHUNK_FRAMES = 64


# --------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------


class MediaError(RuntimeError, UserError):
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
