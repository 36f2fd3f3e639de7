"""A paper table as a grid of experiments: its rows (params overrides, the paper's values), the metrics it reports
and the pairwise claims the paper makes about it, read from `configs/tables/<name>.yaml` and checked before anything
runs (an unknown parameter names the file, the row and the key).

One row at one seed is one DVC experiment: the row's overrides plus the seed of every stage a seed reaches
(`SEED_KEYS`: the alignment VAE, the flow, the joint tuning and the sampling draws). The data, the codec, the visual
encoder and the evaluators are left at the params file's values, so every row is judged by the same instrument and
DVC's cache serves their stages to every row.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vaflow import config
from vaflow.config.section import ConfigError
from vaflow.errors import UserError, did_you_mean
from vaflow.eval import verdicts
from vaflow.eval.verdicts import DIRECTIONS

__all__ = [
    "GRID_DIR",
    "SEED_KEYS",
    "Claim",
    "Grid",
    "Row",
    "exp_args",
    "grid_names",
    "load_grid",
    "overrides",
]

GRID_DIR = Path(__file__).resolve().parents[2] / "configs" / "tables"
SEED_KEYS = ("train_align.trainer.seed", "train_flow.trainer.seed", "joint_tune.trainer.seed", "sample.seed")


@dataclass(frozen=True)
class Row:
    """One row: its label in the report, its params overrides (dotted key -> value) and the paper's figures."""

    name: str
    label: str
    set: dict[str, Any]
    paper: dict[str, float]


@dataclass(frozen=True)
class Claim:
    """`row` beats `than` on each metric of `on` (the claim's `metrics`, all of the table's by default; each
    metric's direction says which way is better)."""

    row: str
    than: str
    on: tuple[str, ...]


@dataclass(frozen=True)
class Grid:
    """A table: metric name -> better direction (`lower` / `higher`), its rows in order, its claims."""

    name: str
    title: str
    metrics: dict[str, str]
    rows: dict[str, Row]
    claims: tuple[Claim, ...]
    equal_total: tuple[str, ...] = ()  # params whose sum every row keeps at the params file's (a step budget)


def grid_names() -> list[str]:
    """The tables shipped in configs/tables/."""
    return sorted(p.stem for p in GRID_DIR.glob("*.yaml"))


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return dict(value)


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            hint = did_you_mean(str(key), allowed)
            raise ConfigError(f"{where}: unknown key {key!r}{hint}; known: {', '.join(allowed)}")


def _check_override(key: str, defaults: Mapping[str, Any], where: str) -> None:
    """A dotted params key must name a setting (a leaf) of the params file."""
    node: Any = defaults
    done: list[str] = []
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            choices = list(node) if isinstance(node, Mapping) else []
            prefix = ".".join(done)
            raise ConfigError(
                f"{where}: unknown parameter {key!r}{did_you_mean(part, choices)}"
                + (f" ({prefix} has no key {part!r})" if prefix else "")
            )
        node, done = node[part], [*done, part]
    if isinstance(node, Mapping):
        raise ConfigError(f"{where}: {key!r} is a section, not a parameter; set one of its keys")


def _nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def load_grid(name_or_path: str | Path) -> Grid:
    """The table `configs/tables/<name>.yaml` (or a path), every row's overrides validated against the params
    schema; ConfigError naming the file, the row and the key otherwise."""
    path = Path(name_or_path)
    if path.suffix != ".yaml":
        path = GRID_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            names = grid_names()
            raise ConfigError(f"unknown table {str(name_or_path)!r}{did_you_mean(str(name_or_path), names)}; tables: {', '.join(names)}")  # fmt: skip
    if not path.is_file():
        raise ConfigError(f"{path}: no such table file")
    try:
        data = _mapping(yaml.safe_load(path.read_text()), str(path))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    _check_keys(data, ("title", "metrics", "rows", "claims", "equal_total"), str(path))
    metrics = {str(k): str(v) for k, v in _mapping(data.get("metrics"), f"{path}: metrics").items()}
    for metric, better in metrics.items():
        if better not in DIRECTIONS:
            raise ConfigError(
                f"{path}: metrics: {metric}: {better!r}, expected one of {', '.join(DIRECTIONS)}"
            )
    defaults = config.Params().model_dump(mode="json")
    equal_total = data.get("equal_total") or []
    equal_total = (equal_total,) if isinstance(equal_total, str) else tuple(map(str, equal_total))
    for key in equal_total:
        _check_override(key, defaults, f"{path}: equal_total")
        if not isinstance(_lookup(defaults, key), int):
            raise ConfigError(f"{path}: equal_total: {key!r} is not an integer parameter")
    rows: dict[str, Row] = {}
    for name, spec in _mapping(data.get("rows"), f"{path}: rows").items():
        where = f"{path}: row {name!r}"
        spec = _mapping(spec, where)
        _check_keys(spec, ("label", "set", "paper"), where)
        settings = _mapping(spec.get("set") or {}, f"{where}: set")
        for key in settings:
            _check_override(key, defaults, where)
            if key in SEED_KEYS:
                raise ConfigError(f"{where}: {key!r} is set per seed by the grid, not by a row")
        try:
            config.validate(config.deep_merge(defaults, _nested(settings)), where)
        except ConfigError as err:
            raise ConfigError(str(err)) from None
        paper = _mapping(spec.get("paper") or {}, f"{where}: paper")
        for metric in paper:
            if metric not in metrics:
                raise ConfigError(
                    f"{where}: paper: {metric!r} is not a metric of the table ({', '.join(metrics)})"
                )
        rows[str(name)] = Row(
            str(name), str(spec.get("label", name)), settings, {k: float(v) for k, v in paper.items()}
        )
    if not rows:
        raise ConfigError(f"{path}: rows: a table needs at least one row")
    claims = []
    for i, spec in enumerate(data.get("claims") or []):
        where = f"{path}: claims[{i}]"
        spec = _mapping(spec, where)
        _check_keys(spec, ("row", "than", "metrics"), where)
        on = spec.get("metrics", list(metrics))
        on = (on,) if isinstance(on, str) else tuple(on)
        for key in ("row", "than"):
            if spec.get(key) not in rows:
                raise ConfigError(f"{where}: {key}: {spec.get(key)!r} is not a row ({', '.join(rows)})")
        for metric in on:
            if metric not in metrics:
                raise ConfigError(
                    f"{where}: metrics: {metric!r} is not a metric of the table ({', '.join(metrics)})"
                )
        claims.append(Claim(spec["row"], spec["than"], on))
    grid = Grid(path.stem, str(data.get("title", path.stem)), metrics, rows, tuple(claims), equal_total)
    for row in rows.values():
        overrides(grid, row, 0, defaults)  # a row that overspends the budget fails here, before any run
    return grid


def _lookup(params: Mapping[str, Any], key: str) -> Any:
    node: Any = params
    for part in key.split("."):
        node = node[part]
    return node


def overrides(grid: Grid, row: Row, seed: int, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every params override of `row` at `seed`: its own settings, the seed of each stage a seed reaches and, when
    the table keeps a total (`equal_total`), the budget a row's settings leave unspent moved to the first of those
    params the row does not set. `params`: the params the rows start from (the schema's defaults if None), so a
    "not tuned" row (`joint_tune.trainer.steps: 0`) trains the flow for the steps the tuned row spends on both."""
    values = dict(row.set)
    if grid.equal_total:
        params = config.Params().model_dump(mode="json") if params is None else params
        budget = sum(_lookup(params, k) for k in grid.equal_total)
        spent = sum(values.get(k, _lookup(params, k)) for k in grid.equal_total)
        free = [k for k in grid.equal_total if k not in values]
        if spent > budget or (spent < budget and not free):
            raise ConfigError(
                f"{grid.name}: row {row.name!r}: {' + '.join(grid.equal_total)} = {spent}, the table keeps it at "
                f"the params file's {budget}" + ("" if spent > budget else "; leave one of them unset")
            )
        if spent < budget:
            values[free[0]] = _lookup(params, free[0]) + budget - spent
    return {**values, **dict.fromkeys(SEED_KEYS, seed)}


def exp_args(values: Mapping[str, Any]) -> list[str]:
    """`dvc exp run` arguments for the overrides: `-S key=value` each, values in YAML's spelling."""
    args = []
    for key, value in values.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        args += ["-S", f"{key}={text}"]
    return args


# ----------------------------------------------------------------------------------------------------------------
# The report of a finished grid
# ----------------------------------------------------------------------------------------------------------------


class GridError(RuntimeError, UserError):
    """A grid's runs cannot make a report: none finished, or they were scored by different evaluators."""


@dataclass(frozen=True)
class SeedRun:
    """One row at one seed as tracked: its metrics (None when the run failed, `error` says why) and the identity
    of the evaluators that scored it."""

    metrics: dict[str, float] | None
    evaluators: str = ""
    error: str = ""
    run_id: str = ""  # the MLflow run it was read from


def _cell(values: list[float], paper: float | None) -> str:
    text = verdicts.summarize(values).text() if values else "—"
    return text if paper is None else f"{text} ({paper:g})"


def report(grid: Grid, runs: Mapping[str, Mapping[int, SeedRun]], alpha: float = 0.05) -> str:
    """The markdown report of `grid` from its runs (row -> seed -> SeedRun): mean ± 95 % interval per row and metric
    with the paper's figure beside it, the failed seeds, and each claim's verdict per metric (paired by seed)."""
    finished = {
        (r, s): run for r, by_seed in runs.items() for s, run in by_seed.items() if run.metrics is not None
    }
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

    def values(row: str, metric: str) -> dict[int, float]:
        return {s: r.metrics[metric] for s, r in runs.get(row, {}).items() if r.metrics is not None and metric in r.metrics}  # fmt: skip

    head = ["row", *(f"{m} {'↓' if b == 'lower' else '↑'}" for m, b in grid.metrics.items()), "seeds"]
    lines = [f"# {grid.title}", "", "Mean ± 95 % confidence interval over seeds (Student t); the paper's figure in",
             "parentheses.", "", "| " + " | ".join(head) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |"]  # fmt: skip
    failures = []
    for name, row in grid.rows.items():
        by_seed = runs.get(name, {})
        cells = [_cell(list(values(name, m).values()), row.paper.get(m)) for m in grid.metrics]
        done = sum(r.metrics is not None for r in by_seed.values())
        lines.append(f"| {row.label} | " + " | ".join(cells) + f" | {done}/{len(by_seed)} |")
        failures += [f"- {row.label}, seed {s}: failed: {r.error}" for s, r in sorted(by_seed.items()) if r.metrics is None]  # fmt: skip
    if failures:
        lines += ["", "## Failed runs", "", *failures]
    lines += ["", "## The paper's claims", ""]
    for claim in grid.claims:
        a, b = grid.rows[claim.row], grid.rows[claim.than]
        for metric in claim.on:
            v = verdicts.judge(values(a.name, metric), values(b.name, metric), grid.metrics[metric], alpha)
            pa, pb = a.paper.get(metric), b.paper.get(metric)
            paper = ""
            if pa is not None and pb is not None:
                holds = pa < pb if grid.metrics[metric] == "lower" else pa > pb
                paper = f"; the paper: {pa:g} vs {pb:g}, {'as claimed' if holds else 'not as claimed'}"
            lines.append(f"- {a.label} beats {b.label} on {metric}: **{v.outcome}** ({v.reason}, mean difference "
                         f"{v.mean_difference:.4g}{paper})")  # fmt: skip
    lines += ["", f"Test: {verdicts.TEST} at α = {alpha}, pairing each row's seed s with the other row's seed s. "
              f"Evaluators: {identities.pop() or 'unnamed'}.", ""]  # fmt: skip
    return "\n".join(lines)


def exp_name(grid: Grid, row: str, seed: int) -> str:
    """The DVC experiment (and MLflow `dvc_experiment` tag) of one row at one seed: `<table>-<row>-s<seed>`."""
    return f"{grid.name}-{row}-s{seed}"


def collect(grid: Grid, tracking_uri: str, experiment: str) -> dict[str, dict[int, SeedRun]]:
    """The grid's runs in the MLflow experiment `experiment` at `tracking_uri` (row -> seed -> SeedRun): per row and
    seed, the newest finished `evaluate` run gives the metrics (`vaflow.<metric>`) and the evaluators' identity (their
    weights hashes in its provenance tags); a seed whose newest run of any stage failed, with no evaluate run after
    it, is failed at that stage."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    pattern = re.compile(rf"{re.escape(grid.name)}-(?P<row>.+)-s(?P<seed>\d+)")
    runs: dict[str, dict[int, SeedRun]] = {}
    latest: dict[tuple[str, int], SeedRun] = {}
    query = f"tags.dvc_experiment LIKE '{grid.name}-%'"
    found_runs = client.search_runs([found.experiment_id], query, max_results=50000)
    for run in sorted(found_runs, key=lambda r: r.info.start_time or 0):  # oldest first: the newest wins
        named = pattern.fullmatch(run.data.tags.get("dvc_experiment", ""))
        if named is None or named["row"] not in grid.rows:
            continue
        key = (named["row"], int(named["seed"]))
        stage, status = run.data.tags.get("stage", "?"), run.info.status
        if stage == "evaluate" and status == "FINISHED":
            m = run.data.metrics
            metrics = {k: m[f"vaflow.{k}"] for k in grid.metrics if f"vaflow.{k}" in m}
            hashes = sorted(v for k, v in run.data.tags.items() if k.startswith("provenance.evaluators.") and k.endswith(".weights_hash"))  # fmt: skip
            seen = SeedRun(metrics, ",".join(hashes), run_id=run.info.run_id)
        elif status in ("FAILED", "KILLED"):
            error = f"stage {stage} {status.lower()} (MLflow run {run.info.run_id})"
            seen = SeedRun(None, error=error, run_id=run.info.run_id)
        else:
            continue
        latest[key] = seen
    for (row, seed), seen in latest.items():
        runs.setdefault(row, {})[seed] = seen
    return runs


def publish(
    grid: Grid, text: str, tracking_uri: str, experiment: str, runs: Mapping[str, Mapping[int, SeedRun]]
) -> str:
    """The table's parent run in MLflow (`vaflow.table` = the grid's name; one per table, reused): the report as its
    artifact `<name>.md`, and every run the report read nested under it (`mlflow.parentRunId`), so the UI shows a
    table as one run with its rows' runs inside. Returns the parent's run id."""
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
    for by_seed in runs.values():
        for run in by_seed.values():
            if run.run_id:
                client.set_tag(run.run_id, "mlflow.parentRunId", parent)
    return parent


# ----------------------------------------------------------------------------------------------------------------
# Running a grid
# ----------------------------------------------------------------------------------------------------------------


def _git(args: list[str], cwd: str | Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise GridError(f"git {' '.join(args)} failed in {cwd}: {done.stderr.strip()}")
    return done.stdout


def run_grid(grid: Grid, seeds: int, cwd: str | Path = ".", dvc: str = "dvc") -> dict[str, str]:
    """Run every row at seeds 1..seeds as a named DVC experiment (`dvc exp run -n <table>-<row>-s<seed> -S …`,
    one after the other, each from the committed params.yaml); the workspace is put back to the commit at the end.
    An experiment the repository already holds is kept, so a killed grid resumes where it stopped; a failed one is
    reported and the others still run. Seed 0 is left to the params file's own run: every experiment then differs from
    it in every stage a seed reaches, so each one runs (and tracks) those stages, while the stages before them and
    the evaluators keep their outputs. Returns
    experiment name -> `ran`, `kept` or `failed (exit N)`."""
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: a grid needs at least 1 seed")
    if _git(["status", "--porcelain", "--", "params.yaml", "dvc.lock"], cwd).strip():
        raise GridError(
            f"{cwd}: params.yaml or dvc.lock has uncommitted changes; commit them first (every row starts from the "
            "committed params, and the grid puts the workspace back to the commit)"
        )
    listed = subprocess.run([dvc, "exp", "list", "--name-only"], cwd=cwd, capture_output=True, text=True)
    if listed.returncode != 0:
        raise GridError(f"dvc exp list failed in {cwd}: {listed.stderr.strip() or listed.stdout.strip()}")
    held = set(listed.stdout.split())
    defaults = config.Params().model_dump(mode="json")
    committed = config.deep_merge(defaults, yaml.safe_load(_git(["show", "HEAD:params.yaml"], cwd)) or {})
    outcome: dict[str, str] = {}
    try:
        for seed in range(1, seeds + 1):
            for row in grid.rows.values():
                name = exp_name(grid, row.name, seed)
                if name in held:
                    outcome[name] = "kept"
                    print(f"{name}: kept (the repository holds it)", flush=True)
                    continue
                print(f"{name}: running", flush=True)
                _git(
                    ["checkout", "HEAD", "--", "params.yaml"], cwd
                )  # the row's overrides on the committed params
                done = subprocess.run(
                    [dvc, "exp", "run", "-n", name, *exp_args(overrides(grid, row, seed, committed))], cwd=cwd
                )
                outcome[name] = "ran" if done.returncode == 0 else f"failed (exit {done.returncode})"
                if done.returncode != 0:
                    print(f"{name}: failed (exit {done.returncode}); the grid goes on", flush=True)
    finally:
        _git(["checkout", "HEAD", "--", "params.yaml", "dvc.lock"], cwd)
        subprocess.run([dvc, "checkout", "--quiet"], cwd=cwd)  # the outputs of the commit, from DVC's cache
    return outcome
