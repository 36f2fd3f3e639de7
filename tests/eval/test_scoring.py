"""Scoring rows of audio: the proxy metrics and the oracle, unusable clips counted and left out, references."""

from __future__ import annotations

import numpy as np
import pytest

from vaflow.eval import oracle, report, scoring


@pytest.fixture(scope="module")
def reference(world, data, loaded):
    return scoring.make_reference(loaded, data[3], oracle.truth_dir(world))


def _score(name, ids, audio, reference, loaded, **kw):
    return scoring.score_row(name, list(ids), audio, 8000, reference, loaded, is_splits=4, **kw)


def test_the_real_audio_scores_as_a_reference_and_as_a_perfect_generator(reference, loaded):
    ids, audio = reference.clips.ids, reference.clips.audio.numpy()
    as_ref = _score("ground_truth", ids, audio, reference, loaded, is_reference=True)
    assert as_ref.metrics["fd"] is None and as_ref.metrics["kl"] is None and as_ref.notes
    perfect = _score("copy", ids, audio, reference, loaded)
    assert perfect.metrics["fd"] == pytest.approx(0, abs=1e-6) and perfect.metrics["kl"] == pytest.approx(
        0, abs=1e-9
    )
    for key in ("is", "ib_va", "acc", "class_acc", "onset_f1"):
        assert as_ref.metrics[key] == pytest.approx(perfect.metrics[key])
    assert perfect.metrics["scored"] == perfect.metrics["clips"] == len(ids)
    assert set(perfect.clips[ids[0]]) >= {"predicted", "label", "ib_va", "p_sync", "rms_db", "onset_f1"}


def test_audio_of_other_clips_scores_worse_on_the_paired_metrics(reference, loaded):
    ids, audio = reference.clips.ids, reference.clips.audio.numpy()
    perfect = _score("copy", ids, audio, reference, loaded)
    rolled = _score(
        "rolled", ids, np.roll(audio, 1, axis=0), reference, loaded
    )  # each clip gets its neighbour's
    # FD compares distributions: the same set of sounds in another order has the same FD.
    assert rolled.metrics["fd"] == pytest.approx(perfect.metrics["fd"], abs=1e-6)
    assert rolled.metrics["kl"] > 0.5
    assert rolled.metrics["ib_va"] < perfect.metrics["ib_va"] - 10
    assert rolled.metrics["class_acc"] < perfect.metrics["class_acc"]


def test_nonfinite_and_silent_clips_are_counted_and_left_out(reference, loaded):
    ids, audio = list(reference.clips.ids), reference.clips.audio.numpy().copy()
    audio[0, 100] = np.nan  # a diverged draw
    audio[1] = 0.0  # a dead decoder
    audio[2] *= 1e-5  # far below the silence threshold
    row = _score("broken", ids, audio, reference, loaded)
    assert (
        row.metrics["nonfinite"] == 1 and row.metrics["silent"] == 2 and row.metrics["scored"] == len(ids) - 3
    )
    assert row.excluded == {"nonfinite": [ids[0]], "silent": [ids[1], ids[2]]}
    rest = _score("rest", ids[3:], audio[3:], reference, loaded)
    for key in ("fd", "kl", "is", "ib_va", "acc", "class_acc", "onset_f1"):
        assert row.metrics[key] == pytest.approx(rest.metrics[key])  # the same as never having had them
    assert "predicted" not in row.clips[ids[0]] and row.clips[ids[1]]["rms_db"] is None
    cells = report.table_rows([row])[0]
    assert cells["excluded"] == "1 nonfinite, 2 silent" and cells["scored"] == f"{len(ids) - 3}/{len(ids)}"


def test_a_row_with_fewer_than_two_usable_clips_has_no_metric(reference, loaded):
    ids, audio = reference.clips.ids, np.zeros_like(reference.clips.audio.numpy())
    audio[0] = reference.clips.audio[0].numpy()
    row = _score("dead", ids, audio, reference, loaded)
    assert "fd" not in row.metrics and row.metrics["scored"] == 1 and "no metric" in row.notes[0]
    assert report.table_rows([row])[0]["fd"] == "—"


def test_bad_rows_are_errors(reference, loaded):
    ids, audio = reference.clips.ids, reference.clips.audio.numpy()
    with pytest.raises(ValueError, match="not among the decoded test clips"):
        _score("x", ["nope", *ids[1:]], audio, reference, loaded)
    with pytest.raises(ValueError, match="3 ids for"):
        _score("x", ids[:3], audio, reference, loaded)
    with pytest.raises(ValueError, match="at 16000 Hz, the evaluators run at 8000"):
        scoring.score_row("x", ids, audio, 16000, reference, loaded)


def test_lengths_are_fitted_to_the_clips():
    audio = np.ones((2, 5), np.float32)
    assert scoring.fit_length(audio, 3).shape == (2, 3)
    padded = scoring.fit_length(audio, 7)
    assert padded.shape == (2, 7) and (padded[:, 5:] == 0).all()
    level = scoring.rms_db(np.array([[0.5, -0.5], [0.0, 0.0], [np.nan, 1.0]]))
    assert level[0] == pytest.approx(20 * np.log10(0.5)) and level[1] == -np.inf and np.isnan(level[2])
