"""Fixtures of the evaluation tests: the prepared micro world, its decoded splits and evaluators trained on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.world import prepare_world
from vaflow.data.clips import load_split
from vaflow.train import evaluators as et

from .world import FAST, WORLD, rows


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # the machine's other cores are not ours


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The prepared micro world (manifest.csv + media), built once."""
    torch.set_num_threads(1)
    return prepare_world(WORLD, tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def data(world):
    """(labels, evaluator config, train clips, test clips) of the micro world."""
    labels = sorted({r["label"] for r in rows(world, "train")})
    cfg = et.evaluator_config(FAST, 8000, len(labels))
    return (
        labels,
        cfg,
        load_split(rows(world, "train"), cfg, 1.0),
        load_split(rows(world, "test"), cfg, 1.0),
    )


@pytest.fixture(scope="module")
def train_clips(world, data):
    """The train split as the evaluators' training reads it, in memory: (store, verdict, log-mel mean and std)."""
    labels, cfg, _, _ = data
    return et.open_train_clips(rows(world, "train"), labels, cfg, 1.0, 2, float("inf"), progress=False)


@pytest.fixture(scope="module")
def trained(data, train_clips, tmp_path_factory):
    """The three evaluators after a short training on the train split, by name."""
    torch.set_num_threads(1)
    store, _, norm = train_clips
    return et.train_evaluators(store, norm, data[1], FAST, tmp_path_factory.mktemp("checkpoints"))[0]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, data, trained):
    """The trained evaluators saved with their cards and loaded back, as the evaluate stage sees them."""
    from vaflow.eval import evaluators as ev

    labels = data[0]
    folder = tmp_path_factory.mktemp("evaluators")
    for name, model in trained.items():
        ev.save_evaluator(folder, name, model, labels, {"calibration": {}})
    return ev.load_evaluators(folder)
