"""Fixtures of the audio_vae stage tests: a temporary repo root with its own MLflow store."""

from __future__ import annotations

import pytest


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
