"""Oracle metrics of the synthetic world: ground truth read from the sidecars, onset F1 per clip and pooled."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vaflow.data import media
from vaflow.eval import oracle
from vaflow.eval.metrics import OnsetScore

from .world import rows


def _truths(world):
    folder = oracle.truth_dir(world)
    return folder, [oracle.read_truth(folder, r["id"]) for r in rows(world, "test")]


def test_truth_is_read_from_the_prepared_folder(world, tmp_path):
    folder, truths = _truths(world)
    assert folder == world / "synth" / "truth"
    assert oracle.truth_dir(tmp_path) is None  # not the synthetic world: no oracle
    labels = {r["id"]: r["label"] for r in rows(world, "test")}
    for t in truths:
        assert t.label == labels[t.id] and t.label in t.classes and t.duration == 1.0
        assert list(t.events) == sorted(t.events, key=lambda e: (e[1], e[0]))
        for name, curve in t.curves.items():
            assert oracle.EVENT_CLASSES.isdisjoint([name]) and curve.values.ndim == 1
            assert curve.times()[1] == pytest.approx(1 / curve.fps)
    event_clips = [t for t in truths if oracle.EVENT_CLASSES.intersection(t.classes)]
    assert event_clips and all(oracle.event_onsets(t) for t in event_clips)


def test_unusable_sidecars_are_errors_naming_the_file(world, tmp_path):
    folder, truths = _truths(world)
    with pytest.raises(oracle.TruthError, match="no_such_clip.json is missing"):
        oracle.read_truth(folder, "no_such_clip")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(oracle.TruthError, match="broken.json: not a ground-truth sidecar"):
        oracle.read_truth(tmp_path, "broken")
    (tmp_path / "partial.json").write_text(json.dumps({"id": "partial", "label": "ball"}))
    with pytest.raises(oracle.TruthError, match="KeyError"):
        oracle.read_truth(tmp_path, "partial")
    shutil.copyfile(folder / f"{truths[0].id}.json", tmp_path / "renamed.json")
    with pytest.raises(oracle.TruthError, match=f"holds the ground truth of '{truths[0].id}'"):
        oracle.read_truth(tmp_path, "renamed")


def test_onsets_of_the_real_audio_match_the_truth_and_silence_matches_none(world):
    _, truths = _truths(world)
    real, silent, scored = [], [], 0
    for row, t in zip(rows(world, "test"), truths, strict=True):
        audio = media.read_audio(row["path"], 8000, start=row["start"], duration=1.0)
        score = oracle.clip_onset_score(audio, 8000, t, tolerance=0.05)
        assert (score is None) == oracle.EVENT_CLASSES.isdisjoint(
            t.classes
        )  # continuous-only clips: unscored
        scored += score is not None
        real.append(score)
        silent.append(oracle.clip_onset_score(np.zeros_like(audio), 8000, t, tolerance=0.05))
    pooled = oracle.pooled_onset_f1(real)
    assert scored >= 2 and pooled.f1 >= 0.8, pooled
    nothing = oracle.pooled_onset_f1(silent)
    assert nothing.tp == 0 and nothing.fp == 0 and nothing.fn == pooled.tp + pooled.fn and nothing.f1 == 0


def test_pooling_sums_matches_over_clips():
    a = OnsetScore(precision=1.0, recall=0.5, f1=2 / 3, tp=1, fp=0, fn=1)
    b = OnsetScore(precision=0.5, recall=1.0, f1=2 / 3, tp=3, fp=3, fn=0)
    pooled = oracle.pooled_onset_f1([a, None, b])
    assert (pooled.tp, pooled.fp, pooled.fn) == (4, 3, 1)
    assert pooled.precision == pytest.approx(4 / 7) and pooled.recall == pytest.approx(4 / 5)
    assert pooled.f1 == pytest.approx(2 * (4 / 7) * (4 / 5) / (4 / 7 + 4 / 5))
    assert oracle.pooled_onset_f1([None, None]) is None
    empty = OnsetScore(precision=1.0, recall=1.0, f1=1.0, tp=0, fp=0, fn=0)
    assert oracle.pooled_onset_f1([empty]).f1 == 1.0  # nothing to find and nothing found


def test_class_accuracy():
    assert oracle.class_accuracy(["ball", "car", "rain"], ["ball", "car", "orb"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predicted labels for 3"):
        oracle.class_accuracy(["a", "b"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="no clips"):
        oracle.class_accuracy([], [])
