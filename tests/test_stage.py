"""The stage skeleton (`vaflow.stage`): flags, params, the tracked run, and bad input versus bug."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vaflow import config
from vaflow.stage import Stage, run

DEMO = Stage(
    "demo",
    "A stage of the tests.",
    {"--out": "a folder", "--metrics": "folder of the metrics files"},
    tracked=("clip", "sample"),
)


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("VAFLOW_EXPERIMENT", "stage-tests")
    monkeypatch.delenv("RANK", raising=False)
    (tmp_path / "params.yaml").write_text(config.dump(config.validate({"clip": {"duration": 2.0}})))
    return tmp_path


def _runs(work: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    experiment = client.get_experiment_by_name("stage-tests")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def test_the_flags_the_params_and_the_tracked_sections_reach_the_work(work):
    seen = {}

    def body(params, args, tracker):
        seen.update(duration=params.clip.duration, out=args.out, params_file=args.params)
        tracker.log_final({"answer": 42.0})
        return "done"

    def after(params, args, result):
        seen["after"] = result

    run(DEMO, body, ["--out", "somewhere", "--metrics", "metrics"], after=after)
    assert seen == {"duration": 2.0, "out": "somewhere", "params_file": "params.yaml", "after": "done"}
    assert json.loads((work / "metrics" / "demo.json").read_text()) == {"answer": 42.0}
    (one,) = _runs(work)
    assert one.info.status == "FINISHED" and one.data.tags["stage"] == "demo"
    assert one.data.params["clip.duration"] == "2.0" and "sample.solver" in one.data.params
    assert not any(key.startswith("flow.") for key in one.data.params)  # only the tracked sections


def test_another_params_file_and_metrics_name(work):
    (work / "other.yaml").write_text(config.dump(config.validate({"clip": {"duration": 1.5}})))
    named = Stage("demo", None, {"--metrics": "metrics"}, tracked=("clip",), metrics_name="renamed")

    def body(params, args, tracker):
        tracker.log_final({"duration": params.clip.duration})

    run(named, body, ["--params", "other.yaml", "--metrics", "m"])
    assert json.loads((work / "m" / "renamed.json").read_text()) == {"duration": 1.5}


def test_a_missing_flag_is_argparse_usage(work, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(DEMO, lambda *a: None, ["--metrics", "metrics"])
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err


def test_a_user_error_is_one_error_line_and_exit_2(work, capsys):
    def body(params, args, tracker):
        raise config.ConfigError("the source holds no clip")

    with pytest.raises(SystemExit) as exit_info:
        run(DEMO, body, ["--out", "o", "--metrics", "metrics"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "error" in line.lower()] == [
        "error: the source holds no clip"
    ]
    assert "Traceback" not in err
    (failed,) = _runs(work)
    assert failed.info.status == "FAILED"


def test_a_bad_params_file_and_a_missing_file_are_user_errors(work, capsys):
    (work / "params.yaml").write_text("clip:\n  duraton: 1\n")
    with pytest.raises(SystemExit) as exit_info:
        run(DEMO, lambda *a: None, ["--out", "o", "--metrics", "metrics"])
    assert exit_info.value.code == 2 and "did you mean 'duration'" in capsys.readouterr().err
    (work / "params.yaml").write_text(config.dump(config.validate({})))

    def body(params, args, tracker):
        (work / "no-such-file").read_text()

    with pytest.raises(SystemExit) as exit_info:
        run(DEMO, body, ["--out", "o", "--metrics", "metrics"])
    assert exit_info.value.code == 2 and "error: [Errno 2] No such file" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(work):
    def body(params, args, tracker):
        return {}["missing"]

    with pytest.raises(KeyError):
        run(DEMO, body, ["--out", "o", "--metrics", "metrics"])


def test_before_fails_ahead_of_any_run_and_hands_its_result_to_the_work(work, capsys):
    def refuse(params, args):
        raise config.ConfigError(f"{args.out}: not a model")

    with pytest.raises(SystemExit):
        run(DEMO, lambda *a: None, ["--out", "o", "--metrics", "metrics"], before=refuse)
    assert "error: o: not a model" in capsys.readouterr().err
    assert _runs(work) == []  # the check ran before the run started

    got = []
    run(DEMO, lambda params, args, tracker, ready: got.append(ready), ["--out", "o", "--metrics", "metrics"],
        before=lambda params, args: ("checked", args.out))  # fmt: skip
    assert got == [("checked", "o")]


FRESH = Stage(
    "demo", None, {"--out": "a folder", "--metrics": "metrics"}, tracked=("clip",), fresh=("--out",)
)


def _good_outputs(work: Path) -> dict[str, str]:
    run(FRESH, _write_outputs("good"), ["--out", "out", "--metrics", "metrics"])
    return _contents(work)


def _write_outputs(text: str, fail: BaseException | None = None):
    def body(params, args, tracker):
        assert list(Path(args.out).iterdir()) == []  # a fresh folder is written from empty
        (Path(args.out) / f"{text}.txt").write_text(text)
        tracker.log_final({"value": float(len(text))})
        if fail is not None:
            raise fail

    return body


def _contents(work: Path) -> dict[str, str]:
    files = [*(work / "out").rglob("*"), work / "metrics" / "demo.json"]
    return {str(p.relative_to(work)): p.read_text() for p in files if p.is_file()}


@pytest.mark.parametrize(
    "failure",
    ["params", "tracking server", "before", "the work"],
)
def test_a_failed_stage_keeps_its_last_good_outputs(work, monkeypatch, failure):
    good = _good_outputs(work)
    assert good == {"out/good.txt": "good", "metrics/demo.json": '{\n  "value": 4.0\n}\n'}
    before = None
    if failure == "params":
        (work / "params.yaml").write_text("clip:\n  duration: fast\n")
    elif failure == "tracking server":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    elif failure == "before":

        def before(params, args):
            raise config.ConfigError("an input file is missing")

    fail = config.ConfigError("a bad shard") if failure == "the work" else None
    with pytest.raises(SystemExit) as exit_info:
        run(FRESH, _write_outputs("bad", fail), ["--out", "out", "--metrics", "metrics"], before=before)
    assert exit_info.value.code == 2
    assert _contents(work) == good
    assert sorted(p.name for p in work.iterdir()) == ["metrics", "mlflow.db", "out", "params.yaml"]


def test_a_killed_stage_gets_its_last_good_folder_back_at_the_next_run(work):
    good = _good_outputs(work)
    with pytest.raises(KeyboardInterrupt):
        run(FRESH, _write_outputs("bad", KeyboardInterrupt()), ["--out", "out", "--metrics", "metrics"])
    assert _contents(work) == good
    # kill -9 gives no chance to clean up: the partial folder and the one set aside both stay
    (work / "out").rename(work / ".out.previous")
    (work / "out").mkdir()
    (work / "out" / "partial.txt").write_text("partial")
    (work / "params.yaml").write_text("clip:\n  duration: fast\n")  # even a run that fails at once repairs it
    with pytest.raises(SystemExit):
        run(FRESH, _write_outputs("bad"), ["--out", "out", "--metrics", "metrics"])
    assert _contents(work) == good and not (work / ".out.previous").exists()


def test_a_succeeding_stage_replaces_the_whole_folder(work):
    _good_outputs(work)
    run(FRESH, _write_outputs("better"), ["--out", "out", "--metrics", "metrics"])
    assert _contents(work) == {"out/better.txt": "better", "metrics/demo.json": '{\n  "value": 6.0\n}\n'}
    assert not (work / ".out.previous").exists()


def test_prepare_without_a_usable_clip_names_the_reasons_and_keeps_the_last_prepared_folder(work, capsys):
    from stages import prepare

    videos = work / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"not a video")
    settings = {"prepare": {"sources": ["folder"], "folder": {"root": str(videos)}, "workers": 1}}
    (work / "params.yaml").write_text(config.dump(config.validate(settings)))
    (work / "prepared").mkdir()
    (work / "prepared" / "manifest.csv").write_text("the last good manifest")
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(["--out", "prepared", "--checkpoints", "checkpoints", "--metrics", "metrics"])
    assert exit_info.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert "no usable clip in the source 'folder' (rejected (" in line and "MLflow" in line
    assert [p.name for p in (work / "prepared").iterdir()] == ["manifest.csv"]
    assert (work / "prepared" / "manifest.csv").read_text() == "the last good manifest"


def test_a_stage_script_of_another_checkout_says_which_vaflow_it_imports(tmp_path):
    """A copied checkout whose .venv still holds the original's editable install ran the original's code (and
    crashed computing a code identity) instead of its own."""
    import subprocess
    import sys

    from vaflow.code import CodeError, import_closure, package_root

    script = tmp_path / "copy" / "stages" / "demo.py"
    script.parent.mkdir(parents=True)
    script.write_text(
        "from vaflow.stage import Stage, run\n"
        "STAGE = Stage('demo', None, {'--metrics': 'metrics'}, tracked=('clip',))\n"
        "def work(params, args, tracker):\n"
        "    print('ran')\n"
        "run(STAGE, work)\n"
    )
    proc = subprocess.run([sys.executable, str(script), "--metrics", "m"], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(package_root()), "PATH": ""})  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {script} imports the vaflow of another checkout, {package_root() / 'vaflow'} (an editable "
        f"install of it comes first); run `bash .ci/setup` in {tmp_path / 'copy'} (or use its .venv) to run its "
        "own code"
    ]
    with pytest.raises(CodeError, match="imports the vaflow of another checkout"):
        import_closure(script)


def test_a_forked_worker_is_stopped_by_sigterm_outright(work):
    """The skeleton turns SIGTERM into SystemExit for its clean-up; a pool worker forked from it must not inherit
    that (a worker dying through SystemExit while the pool terminates it hung `prepare` for good)."""
    import multiprocessing
    import signal

    seen = []

    def body(params, args, tracker):
        with multiprocessing.get_context("fork").Pool(1) as pool:
            seen.append(pool.apply(signal.getsignal, (signal.SIGTERM,)))
        seen.append(signal.getsignal(signal.SIGTERM).__name__)

    run(DEMO, body, ["--out", "o", "--metrics", "metrics"])
    assert seen == [signal.SIG_DFL, "_terminated"]
