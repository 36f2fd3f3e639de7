"""Fixtures every test may use: a temporary repo root with its own MLflow store, MLflow's file store."""

from __future__ import annotations

import pytest

import vaflow  # noqa: F401  (first: pins the CPU kernels before numpy and torch load, as in a stage)


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
