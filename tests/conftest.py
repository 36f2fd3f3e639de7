"""Fixtures every test may use: a temporary repo root with its own MLflow store, MLflow's file store, and the
end-to-end tests' micro pipeline (a real `dvc repro` in a temporary repository, once per test module)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

import vaflow  # noqa: F401  (first: pins the CPU kernels before numpy and torch load, as in a stage)

from .pipeline import COPIED, ROOT, _run

if os.environ.get(
    "PYTEST_XDIST_WORKER_COUNT"
):  # xdist workers share the cores instead of each taking them all
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """One sqlite store for the module (creating one costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def stage_env(tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.chdir(tmp_path)  # artifacts and the repo root of the tracker: the temporary folder
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DVC_ROOT"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> dict[str, str]:
    """MLflow's file store in tmp_path (a new sqlite store costs ~10 s of migrations, the file store none)."""
    env = {"MLFLOW_TRACKING_URI": f"file://{tmp_path}/mlruns", "MLFLOW_ALLOW_FILE_STORE": "true"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A fresh git + DVC repository holding the pipeline, with the micro preset active."""
    work = tmp_path_factory.mktemp("pipeline")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, work / name)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(work),
        "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
        "DVC_NO_ANALYTICS": "1",
    }
    _run(["git", "init", "-q"], work, env)
    _run(["git", "config", "user.email", "tests@vaflow.invalid"], work, env)
    _run(["git", "config", "user.name", "vaflow tests"], work, env)
    _run(["dvc", "init", "-q"], work, env)
    _run([sys.executable, "-m", "vaflow.cli", "preset", "micro"], work, env)
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "pipeline"], work, env)
    return work, env


@pytest.fixture(scope="module")
def first_repro(repo):
    work, env = repo
    return _run(["dvc", "repro"], work, env)


@pytest.fixture
def clone(repo, first_repro, tmp_path):
    """A copy of the repository after the first repro (git, DVC cache, outputs, MLflow store): each test that
    changes something works on its own copy, so no test depends on another one or on their order."""
    work = tmp_path / "clone"
    shutil.copytree(repo[0], work, symlinks=True)
    env = {**repo[1], "PYTHONPATH": str(work), "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    return work, env
