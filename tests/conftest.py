"""Fixtures every test may use: a temporary repo root with its own MLflow store, MLflow's file store, and the
end-to-end tests' micro pipeline (a real `dvc repro` in a temporary repository, once per test module)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from filelock import FileLock

import vaflow  # noqa: F401  (first: pins the CPU kernels before numpy and torch load, as in a stage)

from .pipeline import COPIED, ROOT, _run

if os.environ.get(
    "PYTEST_XDIST_WORKER_COUNT"
):  # xdist workers share the cores instead of each taking them all
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


LONGEST = ("test_pipeline.py", "test_pipeline_changes.py")  # the end-to-end modules: minutes each


def pytest_collection_modifyitems(items) -> None:
    """The end-to-end modules first: xdist hands out whole modules in collection order, so started last they would
    run alone at the end while the other workers sit idle."""
    items.sort(key=lambda item: item.path.name not in LONGEST)  # stable: every other order is kept


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


def _pipeline_env(work: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(work),
        "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
        "DVC_NO_ANALYTICS": "1",
    }


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> tuple[Path, str]:
    """The micro pipeline after its first `dvc repro`, built once per test session: a fresh git + DVC repository
    holding the pipeline with the micro preset active, and the repro's output. Under xdist the first worker to need
    it builds it under a file lock in the folder the workers share, and the others wait and reuse it."""
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    work, out = root / "micro-pipeline", root / "micro-pipeline.out"
    with FileLock(str(root / "micro-pipeline.lock")):
        if not out.exists():  # not built yet, or a build that failed: (re)build from scratch
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            for name in COPIED:
                src = ROOT / name
                if src.is_dir():
                    shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(src, work / name)
            env = _pipeline_env(work)
            _run(["git", "init", "-q"], work, env)
            _run(["git", "config", "user.email", "tests@vaflow.invalid"], work, env)
            _run(["git", "config", "user.name", "vaflow tests"], work, env)
            _run(["dvc", "init", "-q"], work, env)
            _run([sys.executable, "-m", "vaflow.cli", "preset", "micro"], work, env)
            _run(["git", "add", "-A"], work, env)
            _run(["git", "commit", "-qm", "pipeline"], work, env)
            out.write_text(_run(["dvc", "repro"], work, env))
    return work, out.read_text()


def _copy(src: Path, work: Path) -> tuple[Path, dict[str, str]]:
    """A copy of a pipeline repository (git, DVC cache, outputs, MLflow store) and the environment to run it in."""
    shutil.copytree(src, work, symlinks=True)
    return work, _pipeline_env(work)


@pytest.fixture(scope="module")
def repo(built, tmp_path_factory):
    """A module's own copy of the micro pipeline after its first repro (`built`)."""
    return _copy(built[0], tmp_path_factory.mktemp("pipeline") / "repo")


@pytest.fixture(scope="module")
def first_repro(built) -> str:
    """The output of the micro pipeline's first `dvc repro`."""
    return built[1]


@pytest.fixture
def clone(repo, tmp_path):
    """A copy of the repository after the first repro (git, DVC cache, outputs, MLflow store): each test that
    changes something works on its own copy, so no test depends on another one or on their order."""
    return _copy(repo[0], tmp_path / "clone")
