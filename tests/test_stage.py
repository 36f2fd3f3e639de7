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
