"""The report of a grid's runs (vaflow.eval.grid_report): rows over seeds with intervals and verdicts, rows compared
on the clips every run kept, runs gathered from MLflow, a figure's PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.eval.test_grids import GOOD, write_table
from vaflow.eval import grid_report, grids
from vaflow.eval import metrics as fd_metrics
from vaflow.tracking import Tracker


def _runs(fd_base, fd_gauss, evaluators="ev1"):
    def row(fds):
        return {s: grid_report.SeedRun({"fd": fd, "acc": 0.5}, evaluators, clips=64, scored=64) for s, fd in enumerate(fds)}  # fmt: skip

    return {"base": row(fd_base), "gauss": row(fd_gauss)}


def test_the_report_has_every_row_the_paper_column_and_a_verdict_per_claim(tmp_path):
    grid = grids.load_grid(write_table(tmp_path, GOOD))
    runs = _runs([10.0, 11.0, 10.5], [12.0, 13.5, 12.4])
    runs["gauss"][3] = grid_report.SeedRun(None, error="train_flow: loss is nan at step 7")
    text = grid_report.report(grid, runs)
    assert "| VAFlow | 10.50 ± 1.24 (87.7) | 0.50 ± 0.00 | 64 | 3/3 |" in text
    assert (
        "| gauss | 12.63 ± 1.93 | 0.50 ± 0.00 | 64 | 3/4 |" in text
    )  # the failed seed is counted, not averaged
    assert "Clips left out" not in text and "shared clips" not in text  # every run scored every clip
    assert "- gauss, seed 3: failed: train_flow: loss is nan at step 7" in text
    assert "- VAFlow beats gauss on fd: **supports** (p = " in text
    assert "- VAFlow beats gauss on acc: **cannot tell** (the rows are equal on every seed" in text
    assert "paired t-test over seeds" in text and "Evaluators: ev1." in text


def test_a_report_needs_a_finished_run_and_one_set_of_evaluators(tmp_path):
    grid = grids.load_grid(write_table(tmp_path, GOOD))
    failed = {"base": {0: grid_report.SeedRun(None, error="boom")}}
    with pytest.raises(grids.GridError, match="no row has a finished run yet"):
        grid_report.report(grid, failed)
    runs = _runs([10.0, 11.0], [12.0, 13.0])
    runs["gauss"][1] = grid_report.SeedRun({"fd": 13.0, "acc": 0.5}, "ev2")
    with pytest.raises(
        grids.GridError, match=r"different evaluators \(ev1 in base seed 0, ev2 in gauss seed 1\)"
    ):
        grid_report.report(grid, runs)


def _embedded(rng, ids, reference, shift, keep):
    """A run's FD embeddings: the reference's clips moved by `shift`, for the clip ids in `keep`."""
    noisy = reference + shift + 0.1 * rng.standard_normal(reference.shape)
    return {i: noisy[k] for k, i in enumerate(ids) if i in keep}


def test_rows_that_scored_different_clips_are_compared_on_the_clips_every_run_kept(tmp_path):
    grid = grids.load_grid(write_table(tmp_path, GOOD))
    rng = np.random.default_rng(0)
    ids = [f"c{k:02d}" for k in range(40)]
    reference = rng.standard_normal((40, 4))
    runs: dict = {"base": {}, "gauss": {}}
    for seed in range(3):
        for row, shift in (("base", 0.1), ("gauss", 0.8)):
            keep = set(ids) - ({"c00", "c01"} if (row, seed) == ("gauss", 1) else set())  # a run lost 2 clips
            emb = _embedded(rng, ids, reference, shift, keep)
            fd = 5.0 if (row, seed) == ("gauss", 1) else 1.0  # its own FD on fewer clips looks better
            metrics = {"fd": fd, "acc": 50.0}
            runs[row][seed] = grid_report.SeedRun(metrics, "ev", clips=40, scored=len(keep), emb=emb, reference=reference)  # fmt: skip
    n, shared = grid_report.shared_fd(runs)
    assert n == 38
    want = [runs["gauss"][1].emb[i] for i in ids[2:]]
    assert shared["gauss"][1] == pytest.approx(fd_metrics.frechet_distance(np.stack(want), reference).value)
    assert shared["gauss"][0] > shared["base"][0]
    text = grid_report.report(grid, runs)
    assert "FD on the 38 shared clips ↓" in text and "| 38–40 of 40 | 3/3 |" in text
    assert "- gauss, seed 1: 2 of 40" in text
    assert "- VAFlow beats gauss on fd on the 38 shared clips: **supports**" in text
    # Without the embeddings nothing can be recomputed: the FD claims are left undecided, never judged on unequal N.
    bare = {r: {s: grid_report.SeedRun(v.metrics, "ev", clips=40, scored=v.scored) for s, v in by.items()} for r, by in runs.items()}  # fmt: skip
    assert grid_report.shared_fd(bare) is None
    text = grid_report.report(grid, bare)
    assert "- VAFlow beats gauss on fd: **cannot tell** (runs scored different clips)" in text
    assert "the FD claims cannot be judged" in text


def test_a_figure_sweeps_a_parameter_and_plots_each_metric_against_it(tmp_path):
    sweep = {**GOOD, "sweep": {"key": "train_flow.trainer.steps", "values": [100, 200]}}
    grid = grids.load_grid(write_table(tmp_path, sweep))
    assert list(grid.rows) == [
        "base-100",
        "base-200",
        "gauss-100",
        "gauss-200",
    ]  # a curve's points in step order
    assert grid.rows["gauss-200"].set == {"flow.prior": "gaussian", "train_flow.trainer.steps": 200}
    assert grid.claims[0] == grids.Claim(
        "base-200", "gauss-200", ("fd", "acc")
    )  # a claim compares the last points
    runs = {name: {s: grid_report.SeedRun({"fd": 10.0 - row.x / 100 + s, "acc": 1.0}) for s in range(2)} for name, row in grid.rows.items()}  # fmt: skip
    png = grid_report.plot(grid, runs, tmp_path / "out" / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    with pytest.raises(ValueError, match="not a figure"):
        grid_report.plot(grids.load_grid(write_table(tmp_path, GOOD)), runs, tmp_path / "x.png")
    bad = {**sweep, "rows": {"x": {"set": {"train_flow.trainer.steps": 5}}}}
    with pytest.raises(grids.ConfigError, match="row 'x': sets the swept 'train_flow.trainer.steps'"):
        grids.load_grid(write_table(tmp_path, bad))


def _tracked(
    tmp_path, monkeypatch, exp: str, stage: str, metrics=None, hashes=("a1", "b2", "c3"), fail=False, emb=None
):
    """One stage run as the stage skeleton tracks it, inside the DVC experiment `exp` (`emb`: the evaluate stage's
    fd_embeddings.npz as (ids, embeddings, reference))."""
    monkeypatch.setenv("DVC_EXP_NAME", exp)
    tracker = Tracker(stage, metrics_dir=tmp_path / "metrics", root=tmp_path)
    if metrics is not None:
        tracker.log_final(metrics)
        names = ("audio_classifier", "av_embedder", "sync_classifier")
        tracker.log_provenance(
            {"evaluators": {n: {"weights_hash": h} for n, h in zip(names, hashes, strict=True)}}
        )
    if emb is not None:
        path = tmp_path / "art" / "fd_embeddings.npz"
        path.parent.mkdir(exist_ok=True)
        np.savez(path, ids=np.array(emb[0]), emb=emb[1], reference=emb[2])
        tracker.log_artifact(path)
    if fail:  # the stage skeleton's `with tracker:` around a stage that raises
        with pytest.raises(FloatingPointError), tracker:
            raise FloatingPointError("loss is nan at step 7")
    tracker.close()


def test_runs_are_collected_from_mlflow_by_experiment_name(tmp_path, monkeypatch, mlflow_store):
    monkeypatch.setenv("VAFLOW_EXPERIMENT", "grid")
    grid = grids.load_grid(write_table(tmp_path, GOOD))
    assert grids.exp_name(grid, "base", 2) == "t-base-s2"
    _tracked(
        tmp_path,
        monkeypatch,
        "t-base-s0",
        "evaluate",
        {"vaflow.fd": 9.0, "vaflow.acc": 0.6, "vaflow.kl": 1.0, "vaflow.clips": 3, "vaflow.scored": 2},
        emb=(["a", "b"], np.eye(2, 3), np.ones((3, 3))),
    )
    _tracked(tmp_path, monkeypatch, "t-base-s1", "evaluate", {"vaflow.fd": 8.0, "vaflow.acc": 0.7})
    _tracked(tmp_path, monkeypatch, "t-gauss-s0", "train_flow", fail=True)
    _tracked(tmp_path, monkeypatch, "t-gauss-s1", "train_flow", fail=True)
    _tracked(
        tmp_path, monkeypatch, "t-gauss-s1", "evaluate", {"vaflow.fd": 12.0, "vaflow.acc": 0.5}
    )  # rerun, fixed
    _tracked(tmp_path, monkeypatch, "other-base-s0", "evaluate", {"vaflow.fd": 1.0})  # another table
    # Table 3's VAFlow row is this table's base row (the same params): DVC restores it whole from the run cache
    # when Table 3 ran it first, so its runs stand for base's at that seed.
    _tracked(tmp_path, monkeypatch, "table3-tuned-s5", "evaluate", {"vaflow.fd": 7.0, "vaflow.acc": 0.8})
    _tracked(
        tmp_path, monkeypatch, "table4-no_ca-s5", "evaluate", {"vaflow.fd": 70.0}
    )  # no twin: no cross-attention
    runs = grid_report.collect(grid, mlflow_store["MLFLOW_TRACKING_URI"], "grid")
    assert runs["base"][0] == grid_report.SeedRun(
        {"fd": 9.0, "acc": 0.6}, "a1,b2,c3", run_id=runs["base"][0].run_id, clips=3, scored=2
    )
    assert runs["base"][0].lost == 1 and runs["base"][1].lost == 0 and runs["base"][1].emb is None
    assert list(runs["base"][0].emb) == ["a", "b"] and runs["base"][0].emb["b"].tolist() == [0.0, 1.0, 0.0]
    assert runs["base"][0].reference.shape == (3, 3)
    assert runs["base"][1].metrics == {"fd": 8.0, "acc": 0.7}
    assert runs["base"][5].metrics == {"fd": 7.0, "acc": 0.8} and 5 not in runs["gauss"]
    assert grids.twins(grid)["table3-tuned"] == "base" and grids.twins(grid)["table3-gaussian"] == "gauss"
    assert "table4-no_ca" not in grids.twins(grid)
    assert runs["gauss"][0].metrics is None and runs["gauss"][0].error.startswith("stage train_flow failed")
    assert runs["gauss"][0].error.endswith(": FloatingPointError: loss is nan at step 7")  # what stopped it
    assert runs["gauss"][1].metrics == {"fd": 12.0, "acc": 0.5}
    assert "- gauss, seed 0: failed: stage train_flow failed" in grid_report.report(grid, runs)
    assert grid_report.collect(grid, mlflow_store["MLFLOW_TRACKING_URI"], "no such experiment") == {}
    uri = mlflow_store["MLFLOW_TRACKING_URI"]
    parent = grid_report.publish(grid, "# report", uri, "grid", runs)
    assert (
        grid_report.publish(grid, "# report, again", uri, "grid", runs) == parent
    )  # one parent run per table
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(runs["base"][0].run_id).data.tags["mlflow.parentRunId"] == parent
    assert client.get_run(parent).data.tags["vaflow.table"] == "t"
    text = Path(client.download_artifacts(parent, "t.md", str(tmp_path))).read_text()
    assert text == "# report, again"
