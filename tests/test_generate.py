"""`vaflow generate` and its windowing (vaflow.generate.video): cross-fades on their own, then real videos of odd
size and frame rate, longer and shorter than the model's window, through the command line; bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from tests.data.badmedia import make_clip
from tests.test_sampling import HOP, SR, T_A, build_artefacts, one_thread  # noqa: F401 (an autouse fixture)
from vaflow import cli, config
from vaflow.data import media
from vaflow.generate.video import OVERLAP, add_window, crossfade_ramp, window_starts

WINDOW = T_A * HOP  # samples per window (0.2 s at 8 kHz)

# ----------------------------------------------------------------------------------------------------------------
# Windows and cross-fades
# ----------------------------------------------------------------------------------------------------------------


def test_crossfade_weights_are_linear_inside_0_1_and_sum_to_1():
    ramp = crossfade_ramp(8)
    assert ramp.shape == (8,) and (ramp > 0).all() and (ramp < 1).all()
    assert np.allclose(np.diff(ramp), 1 / 8)
    np.testing.assert_allclose(ramp + (1 - ramp), 1.0)  # the fade-in and the fade-out it meets
    np.testing.assert_allclose(ramp + ramp[::-1], 1.0)  # symmetric: the fade-out is the fade-in reversed


@pytest.mark.parametrize("total", [1, 50, WINDOW, WINDOW + 1, 3 * WINDOW, 10 * WINDOW + 37])
def test_windows_cover_the_video_with_at_least_the_overlap(total):
    starts = window_starts(total, WINDOW)
    assert starts[0] == 0 and starts == sorted(set(starts))
    if total <= WINDOW:
        assert starts == [0]
        return
    assert starts[-1] + WINDOW == total  # the last window ends with the video
    overlaps = [a + WINDOW - b for a, b in zip(starts, starts[1:], strict=False)]
    assert min(overlaps) >= round(OVERLAP * WINDOW) and max(overlaps) < WINDOW


def test_constant_windows_join_without_a_step():
    total = 5 * WINDOW + 11
    out = np.zeros(total, np.float32)
    filled = 0
    for start in window_starts(total, WINDOW):
        filled = add_window(out, np.full(WINDOW, 0.5, np.float32), start, filled)
    assert filled == total
    np.testing.assert_allclose(out, 0.5, atol=1e-6)


def test_crossfade_moves_linearly_from_one_window_to_the_next():
    out = np.zeros(300, np.float32)
    filled = add_window(out, np.zeros(200, np.float32), 0, 0)
    filled = add_window(out, np.ones(200, np.float32), 100, filled)  # 100 samples of overlap, cut at 300
    assert filled == 300
    assert (out[:100] == 0).all() and (out[200:] == 1).all()
    np.testing.assert_allclose(out[100:200], crossfade_ramp(100), atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Real videos
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return build_artefacts(tmp_path_factory.mktemp("generate"))


def _generate(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        cli.main(["generate", *argv])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _video_seconds(path, fps: float) -> float:
    return len(media.read_frames(path, fps)) / fps


@pytest.mark.parametrize("duration", [0.75, 0.12])  # several windows (0.75 s = 3.75 windows); less than one
def test_generate_gives_the_video_an_audio_track_of_its_length(models_dir, tmp_path, capsys, duration):
    # Odd size and frame rate, in mkv with 4:4:4 H.264: nothing any dataset of the pipeline holds.
    video = make_clip(tmp_path / "odd clip.mkv", duration=duration, size=(17, 33), fps=13, pix_fmt="yuv444p")
    code, out, err = _generate(capsys, str(video), "--models", str(models_dir), "--steps", "3")
    assert code == 0, err
    result = tmp_path / "odd clip_vaflow.mp4"
    windows = len(window_starts(round(media.video_duration(video) * SR), WINDOW))
    assert f"in {windows} window(s)" in out and (windows > 1) == (duration > 0.2)
    info = media.probe(result)
    assert info.has_audio and info.audio[0].sample_rate == SR and (info.width, info.height) == (33, 17)
    seconds = _video_seconds(video, 13)
    audio = media.read_audio(result, SR)
    assert abs(len(audio) / SR - seconds) <= 1 / 13  # the audio lasts as long as the video, within a frame
    # A real track: finite, audible (not the silence of a zeroed decoder), not clipped full-scale noise.
    rms_db = 20 * np.log10(np.sqrt(np.mean(audio**2)) + 1e-12)
    assert np.isfinite(audio).all() and -60 < rms_db < -3 and np.abs(audio).max() <= 1, rms_db
    # The video stream is copied, not re-encoded: every decoded frame is the input's.
    assert np.array_equal(media.read_frames(result, 13), media.read_frames(video, 13))


def test_generate_is_repeatable_for_a_seed_and_writes_where_asked(models_dir, tmp_path, capsys):
    video = make_clip(tmp_path / "v.mp4", duration=0.3, size=(24, 32), fps=10, audio=False)
    runs = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        code, _, err = _generate(capsys, str(video), "--models", str(models_dir), "-o", str(tmp_path / f"{name}.mp4"),
                                 "--steps", "2", "--seed", seed, "--solver", "midpoint", "--cfg", "0")  # fmt: skip
        assert code == 0, err
        runs.append(media.read_audio(tmp_path / f"{name}.mp4", SR))
    assert np.array_equal(runs[0], runs[1]) and not np.allclose(runs[0], runs[2])


@pytest.mark.parametrize("case", ["missing", "text", "audio_only", "empty"])
def test_unusable_input_fails_with_one_line(models_dir, tmp_path, capsys, case):
    path = tmp_path / f"{case}.mp4"
    if case == "text":
        path.write_text("this is not a video\n" * 20)
    elif case == "audio_only":
        path = make_clip(tmp_path / "audio_only.m4a", duration=0.5, video=False)
    elif case == "empty":
        path.write_bytes(b"")
    code, out, err = _generate(capsys, str(path), "--models", str(models_dir))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and str(path) in err


def test_missing_models_and_bad_settings_are_one_line_errors(models_dir, tmp_path, capsys):
    video = make_clip(tmp_path / "v.mp4", duration=0.3, size=(16, 16), fps=10)
    code, _, err = _generate(capsys, str(video), "--models", str(tmp_path / "nowhere"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "data/models of a vaflow checkout" in err
    assert f"--models {tmp_path / 'nowhere'}: no such folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _generate(capsys, str(video), "--models", str(tmp_path / "empty"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "visual_encoder" in err
    code, _, err = _generate(capsys, str(video), "--models", str(models_dir), "--solver", "eulr")
    assert code == 2 and "did you mean 'euler'" in err


def test_the_input_video_is_never_the_output(models_dir, tmp_path, capsys):
    """`-o` naming the input (directly or through a link) is refused before any work: the input stays as it was."""
    video = make_clip(tmp_path / "v.mp4", duration=0.3, size=(16, 16), fps=10)
    (tmp_path / "link.mp4").symlink_to(video)
    before = video.read_bytes()
    for out in (video, tmp_path / "link.mp4", tmp_path / "." / "v.mp4"):
        code, stdout, err = _generate(
            capsys, str(video), "--models", str(models_dir), "-o", str(out), "--overwrite"
        )
        assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1, err
        assert "is the input video" in err and str(out) in err
    assert video.read_bytes() == before


def test_an_existing_output_is_kept_unless_overwrite_is_given(models_dir, tmp_path, capsys):
    video = make_clip(tmp_path / "v.mp4", duration=0.3, size=(16, 16), fps=10)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"earlier work")
    code, stdout, err = _generate(
        capsys, str(video), "--models", str(models_dir), "-o", str(out), "--steps", "2"
    )
    assert code == 2 and stdout == "" and "--overwrite" in err and str(out) in err
    assert out.read_bytes() == b"earlier work"
    code, _, err = _generate(capsys, str(video), "--models", str(models_dir), "-o", str(out), "--steps", "2",
                             "--overwrite")  # fmt: skip
    assert code == 0, err
    assert media.probe(out).has_audio


@pytest.mark.parametrize("case", ["directory", "parent_is_a_file", "device_foo", "device_cuda"])
def test_bad_output_paths_and_devices_fail_on_one_line_before_any_work(models_dir, tmp_path, capsys, case):
    video = make_clip(tmp_path / "v.mp4", duration=0.3, size=(16, 16), fps=10)
    (tmp_path / "a_file").write_text("x")
    argv = {
        "directory": ["-o", str(tmp_path)],
        "parent_is_a_file": ["-o", str(tmp_path / "a_file" / "out.mp4")],
        "device_foo": ["--device", "foo"],
        "device_cuda": ["--device", "cuda"],
    }[case]
    if case == "device_cuda" and __import__("torch").cuda.is_available():
        argv = ["--device", "cuda:99"]  # a machine with a GPU still has no 100th one
    code, stdout, err = _generate(capsys, str(video), "--models", str(models_dir), *argv)
    assert code == 2 and stdout == "", err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert not (tmp_path / "v_vaflow.mp4").exists()


def test_an_output_that_is_not_an_mp4_is_refused(models_dir, tmp_path, capsys):
    """The result is an mp4 container: `-o out.wav` would hide one under a wav name."""
    video = make_clip(tmp_path / "v.mp4", duration=0.3, size=(16, 16), fps=10)
    code, stdout, err = _generate(
        capsys, str(video), "--models", str(models_dir), "-o", str(tmp_path / "out.wav")
    )
    assert code == 2 and stdout == "" and ".mp4" in err and "out.wav" in err
    assert not (tmp_path / "out.wav").exists()


def test_argument_errors_name_the_flag_and_help_shows_defaults(models_dir, tmp_path, capsys):
    video = make_clip(tmp_path / "v.mp4", duration=0.3, size=(16, 16), fps=10)
    code, _, err = _generate(capsys, str(video), "--models", str(models_dir), "--steps", "0")
    assert code == 2 and "--steps" in err and "sample.steps" not in err, err
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps the help lines
    d = config.SampleConfig()
    assert f"(default: {d.steps})" in shown and f"(default: {d.solver})" in shown
    assert (
        "synthetic 64x64 world" in shown and "vaflow preset vggsound" in shown
    )  # what the embedded model is for
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("vaflow ")


@pytest.mark.parametrize("gamma", ["inf", "nan", "1e6", "-1"])
def test_guidance_must_be_finite_and_in_range_before_any_work(models_dir, tmp_path, capsys, gamma):
    video = make_clip(tmp_path / "v.mp4", duration=0.3, size=(16, 16), fps=10)
    code, stdout, err = _generate(capsys, str(video), "--models", str(models_dir), "--cfg", gamma)
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1 and "--cfg" in err, err
    assert not (tmp_path / "v_vaflow.mp4").exists()


@pytest.mark.parametrize("kind", ["prores", "gif"])
def test_a_video_stream_an_mp4_cannot_hold_is_re_encoded_said_in_one_line(models_dir, tmp_path, capsys, kind):
    if kind == "prores":
        video = make_clip(tmp_path / "p.mov", duration=0.3, size=(16, 16), fps=10, vcodec="prores_ks",
                          pix_fmt="yuv422p10le", acodec="pcm_s16le")  # fmt: skip
    else:
        video = make_clip(tmp_path / "g.gif", duration=0.3, size=(15, 17), fps=10, vcodec="gif", pix_fmt="rgb8",
                          audio=False)  # fmt: skip
    code, stdout, err = _generate(capsys, str(video), "--models", str(models_dir), "--steps", "2")
    assert code == 0, err
    assert err.strip().splitlines() == [
        f"note: {video}: an mp4 cannot hold its {kind} video stream as it is; the result's video is re-encoded "
        "as H.264"
    ]
    result = media.probe(video.with_name(f"{video.stem}_vaflow.mp4"))
    assert result.video_codec.split()[0] == "h264" and result.has_audio
    assert (
        abs(result.duration - media.video_duration(video)) < 0.1
    )  # the mp4's container rounds to its frames


def test_the_length_is_the_video_streams_not_a_longer_audio_tracks(models_dir, tmp_path, capsys):
    """A 0.3 s video with a 1 s soundtrack: the container says 1 s; 0.3 s are generated and written."""
    video = make_clip(tmp_path / "edge.mp4", duration=0.3, size=(16, 16), fps=10, audio_duration=1.0)
    assert media.probe(video).duration > 0.9
    code, out, err = _generate(capsys, str(video), "--models", str(models_dir), "--steps", "2")
    assert code == 0, err
    seconds = media.video_duration(video)
    assert f": {seconds:.2f} s of audio in {len(window_starts(round(seconds * SR), WINDOW))} window(s)" in out
    assert abs(len(media.read_audio(tmp_path / "edge_vaflow.mp4", SR)) / SR - seconds) <= 1 / 10


def test_damaged_model_weights_are_named_as_corrupted_before_any_work(models_dir, tmp_path, capsys):
    """Zeroing part of vaflow.safetensors used to give rc 0 and other audio."""
    import shutil

    damaged = tmp_path / "models"
    shutil.copytree(models_dir, damaged)
    weights = damaged / "vaflow" / "vaflow.safetensors"
    data = bytearray(weights.read_bytes())
    data[-2000:] = bytes(2000)
    weights.write_bytes(bytes(data))
    video = make_clip(tmp_path / "v.mp4", duration=0.3, size=(16, 16), fps=10)
    code, stdout, err = _generate(capsys, str(video), "--models", str(damaged))
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1, err
    assert "corrupted" in err and str(weights) in err
    assert not (tmp_path / "v_vaflow.mp4").exists()


@pytest.mark.parametrize(
    "argv",
    [["--cfg", "inf"], ["--steps", "0"], ["-o", "v.mp4"], ["-o", "out.wav"], ["--models", "nowhere"], []],
    ids=["cfg", "steps", "output is input", "not mp4", "no models", "no such video"],
)
def test_arguments_and_the_input_are_checked_before_torch_is_imported(tmp_path, argv):
    """Every argument error used to come after a 3.5 s torch import."""
    import subprocess
    import sys

    video = make_clip(tmp_path / "v.mp4", duration=0.3, size=(16, 16), fps=10)
    (tmp_path / "data" / "models").mkdir(parents=True)
    given = "missing.mp4" if not argv else str(video)
    code = (
        "import sys\nfrom vaflow import cli\ntry:\n    cli.main(sys.argv[1:])\nfinally:\n"
        "    print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code, "generate", given, *argv], cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == "False\n", proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr


def test_sigterm_during_the_mux_leaves_no_temporary_file(models_dir, tmp_path):
    """SIGTERM used to kill `vaflow generate` past its clean-up: a hidden `.out.mp4.*.tmp` beside the output
    and a `vaflow-media-*` folder in the temporary directory stayed."""
    import os
    import subprocess
    import sys

    video = make_clip(tmp_path / "v.mp4", duration=0.3, size=(16, 16), fps=10)
    temp = tmp_path / "temp"
    temp.mkdir()
    driver = (
        "import os, signal, sys, time\n"
        "from vaflow import cli\n"
        "from vaflow.data.media import writing\n"
        "real = writing._run\n"
        "def run(cmd, *args, **kwargs):\n"
        "    if '-c:v' in cmd or 'aac' in cmd:  # the mux: its temporary file and folder exist now\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(5)\n"
        "    return real(cmd, *args, **kwargs)\n"
        "writing._run = run\n"
        "cli.main(sys.argv[1:])\n"
    )
    argv = [str(video), "--models", str(models_dir), "--steps", "2", "-o", str(tmp_path / "out" / "o.mp4")]
    env = {**os.environ, "TMPDIR": str(temp)}
    proc = subprocess.run([sys.executable, "-c", driver, "generate", *argv], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 143, proc.stderr
    assert list(temp.glob("vaflow-media-*")) == [] and list((tmp_path / "out").iterdir()) == []


def test_loading_the_models_initialises_no_weight(models_dir, tmp_path):
    """Each network is built on the meta device and takes its values from its file: its random initialisation
    is skipped, and with it torch's compiler, which a meta-device init imports (~1.5 s of every start)."""
    import subprocess
    import sys

    video = make_clip(tmp_path / "v.mp4", duration=0.3, size=(16, 16), fps=10)
    code = "import sys\nfrom vaflow import cli\ncli.main(sys.argv[1:])\nprint('torch._dynamo' in sys.modules)"
    argv = ["generate", str(video), "--models", str(models_dir), "--steps", "2"]
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "False", proc.stdout + proc.stderr
