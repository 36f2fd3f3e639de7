"""The report of a grid's runs (vaflow.eval.grids): gathered from MLflow, written as markdown (mean ± 95 % interval
over seeds per row, the paper's figure beside it, a verdict per claim, paired by seed) and, for a figure, a PNG of
each metric against the swept parameter.

Rows are compared on the same clips. A run whose samples came out silent or non-finite is scored on fewer clips than
the others, and FD depends on how many clips it sees; so the report gives every row's clip count, names the runs that
lost clips and, when any did, recomputes FD on the clips every run kept (from each evaluate run's
`fd_embeddings.npz`) and judges the FD claims on that.
"""

from __future__ import annotations

import re
import tempfile
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaflow import atomic
from vaflow.errors import ERROR_TAG
from vaflow.eval import grids, verdicts
from vaflow.eval import metrics as fd_metrics
from vaflow.eval.grids import Grid, GridError

__all__ = ["Runs", "SeedRun", "collect", "plot", "publish", "report", "shared_fd"]


@dataclass(frozen=True)
class SeedRun:
    """One row at one seed as tracked: its metrics (None when the run failed, `error` says why), the identity of the
    evaluators that scored it, how many test clips its VAFlow row had and scored, and its FD embeddings."""

    metrics: dict[str, float] | None
    evaluators: str = ""
    error: str = ""
    run_id: str = ""  # the MLflow run it was read from
    clips: int | None = None
    scored: int | None = None  # clips - scored were left out (silent or non-finite)
    emb: dict[str, np.ndarray] | None = field(default=None, compare=False, repr=False)  # clip id -> embedding
    reference: np.ndarray | None = field(
        default=None, compare=False, repr=False
    )  # the real clips' embeddings

    @property
    def lost(self) -> int:
        """Clips left out of this run's metrics (0 when unknown)."""
        return 0 if self.clips is None or self.scored is None else self.clips - self.scored


Runs = Mapping[str, Mapping[int, SeedRun]]  # row -> seed -> run


def _finished(runs: Runs) -> dict[tuple[str, int], SeedRun]:
    return {
        (r, s): run for r, by_seed in runs.items() for s, run in by_seed.items() if run.metrics is not None
    }


def shared_fd(runs: Runs) -> tuple[int, dict[str, dict[int, float]]] | None:
    """When the finished runs did not all score the same clips: FD of each run recomputed on the clips every run
    kept, as (that clip count, row -> seed -> FD); None when they scored the same clips (nothing to recompute) or a
    run carries no embeddings to recompute from."""
    finished = _finished(runs)
    if not any(run.lost for run in finished.values()) or any(r.emb is None for r in finished.values()):
        return None
    shared = set.intersection(*(set(run.emb) for run in finished.values()))
    ids = sorted(shared)
    out: dict[str, dict[int, float]] = {}
    for (row, seed), run in finished.items():
        with warnings.catch_warnings():  # few shared clips: the FD's reliability is in its own note
            warnings.simplefilter("ignore", UserWarning)
            emb = np.stack([run.emb[i] for i in ids]) if len(ids) >= 2 else None
            value = float("nan") if emb is None else fd_metrics.frechet_distance(emb, run.reference).value
        out.setdefault(row, {})[seed] = value
    return len(ids), out


def _cell(values: list[float], paper: float | None) -> str:
    values = [v for v in values if np.isfinite(v)]
    text = verdicts.summarize(values).text() if values else "—"
    return text if paper is None else f"{text} ({paper:g})"


def _clips(by_seed: Mapping[int, SeedRun]) -> str:
    scored = sorted({r.scored for r in by_seed.values() if r.metrics is not None and r.scored is not None})
    total = {r.clips for r in by_seed.values() if r.clips is not None}
    if not scored:
        return "?"
    text = str(scored[0]) if len(scored) == 1 else f"{scored[0]}–{scored[-1]}"
    return text if total == set(scored) else f"{text} of {max(total, default='?')}"


def report(grid: Grid, runs: Runs, alpha: float = 0.05) -> str:
    """The markdown report of `grid` from its runs (row -> seed -> SeedRun): mean ± 95 % interval per row and metric
    with the paper's figure beside it, the clips each row was scored on, the failed seeds, and each claim's verdict
    per metric (paired by seed; FD on the clips every run kept when runs lost clips)."""
    finished = _finished(runs)
    if not finished:
        raise GridError(f"{grid.name}: no row has a finished run yet; run the table's experiments first")
    identities = {run.evaluators for run in finished.values()}
    if len(identities) > 1:
        first, second = sorted(identities)[:2]
        where = {i: next(f"{r} seed {s}" for (r, s), run in finished.items() if run.evaluators == i) for i in (first, second)}  # fmt: skip
        raise GridError(
            f"{grid.name}: rows were scored by different evaluators ({first} in {where[first]}, {second} in "
            f"{where[second]}): rerun them with one evaluators stage so every row is judged by the same instrument"
        )
    lost = {key: run for key, run in finished.items() if run.lost}
    shared = shared_fd(runs) if "fd" in grid.metrics else None

    def values(row: str, metric: str) -> dict[int, float]:
        if metric == "fd" and shared is not None:
            return shared[1].get(row, {})
        return {s: r.metrics[metric] for s, r in runs.get(row, {}).items() if r.metrics is not None and metric in r.metrics}  # fmt: skip

    def own(row: str, metric: str) -> list[float]:
        return [r.metrics[metric] for r in runs.get(row, {}).values() if r.metrics is not None and metric in r.metrics]  # fmt: skip

    head = ["row", *(f"{m} {'↓' if b == 'lower' else '↑'}" for m, b in grid.metrics.items())]
    head += [f"FD on the {shared[0]} shared clips ↓"] if shared else []
    head += ["clips scored", "seeds"]
    lines = [f"# {grid.title}", "", "Mean ± 95 % confidence interval over seeds (Student t); the paper's figure in",
             "parentheses.", "", "| " + " | ".join(head) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |"]  # fmt: skip
    failures = []
    for name, row in grid.rows.items():
        by_seed = runs.get(name, {})
        cells = [_cell(own(name, m), row.paper.get(m)) for m in grid.metrics]
        cells += [_cell(list(shared[1].get(name, {}).values()), None)] if shared else []
        done = sum(r.metrics is not None for r in by_seed.values())
        lines.append(
            f"| {row.label} | " + " | ".join(cells) + f" | {_clips(by_seed)} | {done}/{len(by_seed)} |"
        )
        failures += [f"- {row.label}, seed {s}: failed: {r.error}" for s, r in sorted(by_seed.items()) if r.metrics is None]  # fmt: skip
    if failures:
        lines += ["", "## Failed runs", "", *failures]
    if lost:
        how = (f"FD is also given on the {shared[0]} clips every run kept, and the FD claims are judged on it"
               if shared else "a run has no fd_embeddings.npz, so FD could not be recomputed on shared clips: "
               "the FD claims cannot be judged")  # fmt: skip
        lines += ["", "## Clips left out (silent or non-finite samples)", "",
                  *(f"- {grid.rows[r].label}, seed {s}: {run.lost} of {run.clips}" for (r, s), run in sorted(lost.items())),  # fmt: skip
                  "", f"Rows scored on different clips are not compared on their own FD: {how}."]  # fmt: skip
    lines += ["", "## The paper's claims", ""]
    for claim in grid.claims:
        a, b = grid.rows[claim.row], grid.rows[claim.than]
        for metric in claim.on:
            if metric == "fd" and lost and shared is None:
                lines.append(
                    f"- {a.label} beats {b.label} on fd: **cannot tell** (runs scored different clips)"
                )
                continue
            v = verdicts.judge(values(a.name, metric), values(b.name, metric), grid.metrics[metric], alpha)
            pa, pb = a.paper.get(metric), b.paper.get(metric)
            paper = ""
            if pa is not None and pb is not None:
                holds = pa < pb if grid.metrics[metric] == "lower" else pa > pb
                paper = f"; the paper: {pa:g} vs {pb:g}, {'as claimed' if holds else 'not as claimed'}"
            on = f"fd on the {shared[0]} shared clips" if metric == "fd" and shared else metric
            lines.append(f"- {a.label} beats {b.label} on {on}: **{v.outcome}** ({v.reason}, mean difference "
                         f"{v.mean_difference:.4g}{paper})")  # fmt: skip
    lines += ["", f"Test: {verdicts.TEST} at α = {alpha}, pairing each row's seed s with the other row's seed s. "
              f"Evaluators: {identities.pop() or 'unnamed'}.", ""]  # fmt: skip
    return "\n".join(lines)


def plot(grid: Grid, runs: Runs, path: str | Path) -> Path:
    """A figure's PNG: each metric against the swept parameter, one line per row of the table file (mean over seeds,
    the 95 % interval shaded). ValueError for a grid without a sweep."""
    if not grid.sweep:
        raise ValueError(f"{grid.name}: not a figure (no sweep): nothing to plot")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    series: dict[str, list[Any]] = {}
    for row in grid.rows.values():
        series.setdefault(row.series, []).append(row)
    fig, axes = plt.subplots(1, len(grid.metrics), figsize=(5 * len(grid.metrics), 3.8), squeeze=False)
    for ax, (metric, better) in zip(axes[0], grid.metrics.items(), strict=True):
        for points in series.values():
            xs, mean, low, high = [], [], [], []
            for row in points:
                got = [r.metrics[metric] for r in runs.get(row.name, {}).values() if r.metrics and metric in r.metrics]  # fmt: skip
                if not got:
                    continue
                summary = verdicts.summarize(got)
                half = 0.0 if summary.n < 2 else summary.half_width
                xs.append(row.x), mean.append(summary.mean), low.append(summary.mean - half), high.append(summary.mean + half)  # fmt: skip
            if xs:
                label = points[0].label.rsplit(", ", 1)[0]
                ax.plot(xs, mean, marker="o", label=label)
                ax.fill_between(xs, low, high, alpha=0.2)
        ax.set_xlabel(grid.sweep)
        ax.set_ylabel(f"{metric} ({better} is better)")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(
        textwrap.fill(grid.title, 12 * 5 * len(grid.metrics)), fontsize=10
    )  # ~12 characters per inch
    fig.tight_layout()
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


def _embeddings(client: Any, run_id: str) -> tuple[dict[str, np.ndarray] | None, np.ndarray | None]:
    """The evaluate run's fd_embeddings.npz as (clip id -> embedding, reference), (None, None) if it has none."""
    from vaflow.eval.table import EMBEDDINGS

    if EMBEDDINGS not in {a.path for a in client.list_artifacts(run_id)}:
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        with np.load(client.download_artifacts(run_id, EMBEDDINGS, tmp)) as data:
            return dict(zip(data["ids"].tolist(), data["emb"], strict=True)), data["reference"]


def collect(
    grid: Grid, tracking_uri: str, experiment: str, others: list[Grid] | None = None
) -> dict[str, dict[int, SeedRun]]:
    """The grid's runs in the MLflow experiment `experiment` at `tracking_uri` (row -> seed -> SeedRun): per row and
    seed, the newest finished `evaluate` run gives the metrics (`vaflow.<metric>`, the clip counts) and the
    evaluators' identity (their weights hashes in its provenance tags); a seed whose newest run of any stage failed,
    with no evaluate run after it, is failed at that stage. A row's runs are those of its own experiments and of its
    twins in `others` (the shipped tables by default; grids.twins), which DVC's run cache lets run only once."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    names = {f"{grid.name}-{row}": row for row in grid.rows} | grids.twins(grid, others)
    pattern = re.compile(r"(?P<name>.+)-s(?P<seed>\d+)")
    latest: dict[tuple[str, int], Any] = {}
    found_runs = client.search_runs(
        [found.experiment_id], "tags.dvc_experiment LIKE '%-s%'", max_results=50000
    )
    for run in sorted(found_runs, key=lambda r: r.info.start_time or 0):  # oldest first: the newest wins
        named = pattern.fullmatch(run.data.tags.get("dvc_experiment", ""))
        if named is None or named["name"] not in names:
            continue
        stage, status = run.data.tags.get("stage", "?"), run.info.status
        if (stage == "evaluate" and status == "FINISHED") or status in ("FAILED", "KILLED"):
            latest[(names[named["name"]], int(named["seed"]))] = run
    runs: dict[str, dict[int, SeedRun]] = {}
    for (row, seed), run in latest.items():
        if run.info.status != "FINISHED":
            error = f"stage {run.data.tags.get('stage', '?')} {run.info.status.lower()} (MLflow run {run.info.run_id})"
            error += f": {run.data.tags[ERROR_TAG]}" if ERROR_TAG in run.data.tags else ""
            runs.setdefault(row, {})[seed] = SeedRun(None, error=error, run_id=run.info.run_id)
            continue
        m = run.data.metrics
        got = {k: m[f"vaflow.{k}"] for k in grid.metrics if f"vaflow.{k}" in m}
        hashes = sorted(v for k, v in run.data.tags.items() if k.startswith("provenance.evaluators.") and k.endswith(".weights_hash"))  # fmt: skip
        count = {k: int(m[f"vaflow.{k}"]) if f"vaflow.{k}" in m else None for k in ("clips", "scored")}
        emb, reference = _embeddings(client, run.info.run_id)
        runs.setdefault(row, {})[seed] = SeedRun(got, ",".join(hashes), "", run.info.run_id, **count, emb=emb, reference=reference)  # fmt: skip
    return runs


def publish(
    grid: Grid, text: str, tracking_uri: str, experiment: str, runs: Runs, files: Sequence[Path] = ()
) -> str:
    """The table's parent run in MLflow (`vaflow.table` = the grid's name; one per table, reused): the report as its
    artifact `<name>.md` (and `files`, e.g. the figure's PNG), every run the report read nested under it
    (`mlflow.parentRunId`), so the UI shows a table as one run with its rows' runs inside. Returns its run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    exp_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    old = client.search_runs([exp_id], f"tags.`vaflow.table` = '{grid.name}'", max_results=1)
    if old:
        parent = old[0].info.run_id
    else:
        tags = {"vaflow.table": grid.name, "stage": "table", "mlflow.runName": f"table {grid.name}"}
        parent = client.create_run(exp_id, tags=tags, run_name=f"table {grid.name}").info.run_id
        client.set_terminated(parent, "FINISHED")
    client.log_text(parent, text, f"{grid.name}.md")
    for path in files:
        client.log_artifact(parent, str(path))
    for by_seed in runs.values():
        for run in by_seed.values():
            if run.run_id:
                client.set_tag(run.run_id, "mlflow.parentRunId", parent)
    return parent
