"""Tracking: MLflow runs in the embedded sqlite store and on a real `mlflow server`, DVC metrics files, rank-0
only, fast failure on an unreachable server, run groups."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.train.toy import ToyStream, make_model, toy_loss
from vaflow.config.trainer import TrainerConfig
from vaflow.tracking import Tracker, TrackingError, params_hash, repo_root, run_group
from vaflow.train.numerics import seed_everything
from vaflow.train.trainer import Trainer

# MLflow's own SQLAlchemy usage warns on import of its store; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

ENV_KEYS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "VAFLOW_EXPERIMENT",
    "VAFLOW_RUN_GROUP",
    "DVC_ROOT",
    "DVC_EXP_NAME",
    "DVC_STAGE",
    "RANK",
    "WORLD_SIZE",
)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A fresh git repo with a params.yaml as the working directory, and no tracking variables set."""
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "params.yaml").write_text("toy:\n  trainer:\n    lr: 0.01\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "params.yaml"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_tracked(root: Path, steps: int = 6) -> tuple[Tracker, TrainerConfig]:
    cfg = TrainerConfig(steps=steps, batch_size=8, lr=1e-2, warmup_steps=2, log_every=2, checkpoint_every=100)
    seed_everything(0)
    with Tracker("train_toy", params={"toy": {"trainer": cfg}}, metrics_dir=root / "metrics") as tracker:
        stream = ToyStream(0, 1, 8)
        result = Trainer(make_model(), toy_loss(), stream, cfg, root / "ckpt", tracker).fit()
        tracker.log_final({"loss": result.losses["loss"], "val_mae": 0.25})
        (root / "note.txt").write_text("artifact")
        tracker.log_artifact(root / "note.txt")
    return tracker, cfg


def test_sqlite_default_run_has_params_metrics_tags_and_dvc_files(repo, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "exp-brisk-lark")
    tracker, cfg = _train_tracked(repo)
    assert tracker.uri == f"sqlite:///{repo / 'mlflow.db'}"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracker.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["toy.trainer.lr"] == "0.01" and params["toy.trainer.betas"] == "[0.9, 0.999]"
    assert params["toy.trainer.schedule"] == "constant" and params["toy.trainer.resume"] == "true"
    tags = run.data.tags
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert tags["stage"] == "train_toy" and tags["git_revision"] == head
    assert tags["dvc_experiment"] == "exp-brisk-lark" and tags["vaflow.group"] == "exp-brisk-lark"
    assert tags["world_size"] == "1" and tags["host"] == socket.gethostname()
    assert [m.step for m in client.get_metric_history(tracker.run_id, "loss")] == [2, 4, 6]
    assert {"grad_norm", "lr", "samples_per_s", "mae", "val_mae"} <= set(run.data.metrics)
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "vaflow" and exp.artifact_location == (repo / "mlartifacts" / "vaflow").as_uri()
    assert list((repo / "mlartifacts").rglob("note.txt"))

    final = json.loads((repo / "metrics" / "train_toy.json").read_text())
    assert set(final) == {"loss", "val_mae"} and final["val_mae"] == 0.25
    with (repo / "metrics" / "train_toy_steps.tsv").open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["step"] for r in rows] == ["2", "4", "6"] and {"loss", "lr", "mae"} <= set(rows[0])


def test_mlflow_server_run_is_readable_through_the_rest_api(repo, monkeypatch):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_cli), "server", "--backend-store-uri", f"sqlite:///{repo / 'server.db'}"]
    cmd += ["--default-artifact-root", str(repo / "server-artifacts"), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", "1"]
    server_log = (repo / "server.log").open("w")
    server = subprocess.Popen(cmd, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, (repo / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, (
                    "mlflow server did not come up:\n" + (repo / "server.log").read_text()
                )
                time.sleep(0.3)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("VAFLOW_RUN_GROUP", "nightly-42")
        tracker, _ = _train_tracked(repo, steps=4)
        assert tracker.uri == url and not (repo / "mlflow.db").exists()

        with urllib.request.urlopen(
            f"{url}/api/2.0/mlflow/runs/get?run_id={tracker.run_id}", timeout=10
        ) as r:
            run = json.load(r)["run"]
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        metrics = {m["key"]: m for m in run["data"]["metrics"]}
        assert params["toy.trainer.steps"] == "4" and tags["vaflow.group"] == "nightly-42"
        assert tags["stage"] == "train_toy" and run["info"]["status"] == "FINISHED"
        assert metrics["loss"]["step"] == 4 and "val_mae" in metrics
        body = json.dumps(
            {"experiment_ids": [run["info"]["experiment_id"]], "filter": "tags.`vaflow.group` = 'nightly-42'"}
        ).encode()
        request = urllib.request.Request(
            f"{url}/api/2.0/mlflow/runs/search", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            found = json.load(r)["runs"]
        assert [f["info"]["run_id"] for f in found] == [tracker.run_id]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)
        server_log.close()


def test_unreachable_server_fails_fast_naming_the_uri(repo):
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(TrackingError, match=rf"MLflow tracking server {uri} is unreachable"):
        Tracker("train_toy", tracking_uri=uri, metrics_dir=repo / "metrics")
    assert time.monotonic() - start < 10


def test_other_ranks_do_nothing(tmp_path):
    tracker = Tracker("train_toy", params={"a": 1}, metrics_dir=tmp_path / "m", rank=1, world_size=2)
    tracker.start_at(0)
    tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.log_final({"loss": 1.0})
    tracker.close()
    assert tracker.run_id is None and not (tmp_path / "m").exists()


def test_step_log_is_truncated_to_the_resume_step_and_widened_for_new_metrics(tmp_path):
    steps = tmp_path / "m" / "s_steps.tsv"
    first = Tracker("s", metrics_dir=tmp_path / "m", root=tmp_path, mlflow=False)
    first.start_at(0)
    for step in (1, 2, 3, 4):
        first.log_metrics({"loss": float(step)}, step)
    second = Tracker("s", metrics_dir=tmp_path / "m", root=tmp_path, mlflow=False)
    second.start_at(2)  # resumed from a step-2 checkpoint: rows 3 and 4 are from the lost part of the run
    second.log_metrics({"loss": 30.0, "mae": 1.5}, 3)
    with steps.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [(r["step"], r["loss"], r["mae"]) for r in rows] == [
        ("1", "1.0", ""),
        ("2", "2.0", ""),
        ("3", "30.0", "1.5"),
    ]
    fresh = Tracker("s", metrics_dir=tmp_path / "m", root=tmp_path, mlflow=False)
    fresh.log_metrics({"loss": 9.0}, 1)  # no start_at: a new run starts a new log
    assert steps.read_text().splitlines() == ["step\tloss", "1\t9.0"]


def test_run_group_and_repo_root(repo, monkeypatch, tmp_path_factory):
    phash = params_hash(repo)
    assert len(phash) == 12 and params_hash(tmp_path_factory.mktemp("empty")) == "noparams"
    assert run_group("0123456789abcdef", phash) == f"0123456789ab-{phash}"
    monkeypatch.setenv("DVC_EXP_NAME", "exp-x")
    assert run_group("0123456789abcdef", phash) == "exp-x"
    monkeypatch.setenv("VAFLOW_RUN_GROUP", "sweep-1")
    assert run_group("0123456789abcdef", phash) == "sweep-1"

    (repo / "sub").mkdir()
    assert repo_root(repo / "sub") == repo.resolve()  # git top level
    monkeypatch.setenv("DVC_ROOT", str(repo / "sub"))  # `dvc exp run --temp` points here at the real repo
    assert repo_root() == (repo / "sub").resolve()


def test_a_copied_checkout_keeps_its_artifacts_in_itself(repo, tmp_path_factory, monkeypatch):
    """mlflow.db stores the experiment's artifact folder as an absolute path: a copy's runs wrote into the original."""
    from mlflow.tracking import MlflowClient

    first, _ = _train_tracked(repo)
    copy = tmp_path_factory.mktemp("copies") / "copy"
    subprocess.run(["cp", "-a", str(repo), str(copy)], check=True)
    monkeypatch.chdir(copy)
    original = sorted(p.relative_to(repo) for p in (repo / "mlartifacts").rglob("*"))
    second, _ = _train_tracked(copy)
    assert sorted(p.relative_to(repo) for p in (repo / "mlartifacts").rglob("*")) == original
    client = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    for run_id in (first.run_id, second.run_id):  # the copied run too: its artifacts are the copy's
        uri = client.get_run(run_id).info.artifact_uri
        assert uri.startswith((copy / "mlartifacts").as_uri() + "/"), uri
        assert [a.path for a in client.list_artifacts(run_id)] == ["note.txt"]


def test_a_server_that_is_not_mlflow_is_one_short_line(repo):
    """A web server that answers every MLflow call with an HTML page: its page used to fill the error."""
    import http.server
    import threading

    class Html(http.server.BaseHTTPRequestHandler):
        def _page(self):
            body = ("<html><head><title>Not here</title></head><body>" + "<p>nothing</p>\n" * 200).encode()
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _page

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(TrackingError) as info:
            Tracker("train_toy", tracking_uri=uri, metrics_dir=repo / "metrics")
    finally:
        server.shutdown()
    message = str(info.value)
    assert message.startswith(f"MLflow at {uri}: cannot start a run") and "<" not in message
    assert "\n" not in message and len(message) < 400 and message.endswith("is it an MLflow tracking server?")
