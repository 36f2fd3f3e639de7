"""A paper table as a grid of experiments: its rows (params overrides, the paper's values), the metrics it reports
and the pairwise claims the paper makes about it, read from `configs/tables/<name>.yaml` and checked before anything
runs (an unknown parameter names the file, the row and the key).

One row at one seed is one DVC experiment: the row's overrides plus the seed of every stage a seed reaches
(`SEED_KEYS`: the alignment VAE, the flow, the joint tuning and the sampling draws). The data, the codec, the visual
encoder and the evaluators are left at the params file's values, so every row is judged by the same instrument and
DVC's cache serves their stages to every row. A figure is a grid with a `sweep`: each row at every value of one
parameter (Figure 3: the flow's training steps). The report of a grid's runs: vaflow.eval.grid_report.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vaflow import config
from vaflow.config.section import ConfigError
from vaflow.errors import UserError, did_you_mean
from vaflow.eval.verdicts import DIRECTIONS

__all__ = [
    "GRID_DIR",
    "SEED_KEYS",
    "Claim",
    "Grid",
    "GridError",
    "Row",
    "exp_args",
    "exp_name",
    "grid_names",
    "load_grid",
    "overrides",
    "row_params",
    "run_grid",
    "twins",
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
    series: str = (
        ""  # in a sweep: the row of the table file this point belongs to (its name is `<series>-<x>`)
    )
    x: Any = None  # in a sweep: the swept parameter's value at this point


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
    sweep: str = (
        ""  # a figure's x axis: the parameter every row is run at each value of (rows `<row>-<value>`)
    )


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
    _check_keys(data, ("title", "metrics", "rows", "claims", "equal_total", "sweep"), str(path))
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
    sweep_key, rows, finals = _sweep(data.get("sweep"), rows, defaults, path)
    claims = []
    for i, spec in enumerate(data.get("claims") or []):
        where = f"{path}: claims[{i}]"
        spec = _mapping(spec, where)
        _check_keys(spec, ("row", "than", "metrics"), where)
        on = spec.get("metrics", list(metrics))
        on = (on,) if isinstance(on, str) else tuple(on)
        spec = {**spec, **{k: finals.get(spec.get(k), spec.get(k)) for k in ("row", "than")}}
        for key in ("row", "than"):
            if spec.get(key) not in rows:
                raise ConfigError(f"{where}: {key}: {spec.get(key)!r} is not a row ({', '.join(rows)})")
        for metric in on:
            if metric not in metrics:
                raise ConfigError(
                    f"{where}: metrics: {metric!r} is not a metric of the table ({', '.join(metrics)})"
                )
        claims.append(Claim(spec["row"], spec["than"], on))
    title = str(data.get("title", path.stem))
    grid = Grid(path.stem, title, metrics, rows, tuple(claims), equal_total, sweep_key)
    for row in rows.values():
        overrides(grid, row, 0, defaults)  # a row that overspends the budget fails here, before any run
    return grid


def _sweep(
    spec: Any, rows: dict[str, Row], defaults: Mapping[str, Any], path: Path
) -> tuple[str, dict[str, Row], dict[str, str]]:
    """A figure's `sweep: {key, values}`: every row at each value, as rows `<row>-<value>` in that order (a longer
    training run after a shorter one resumes its checkpoints, so a curve costs one run of its longest point).
    Returns the key, the rows, and each row of the file -> its last point (what a claim about the row compares)."""
    if spec is None:
        return "", rows, {}
    where = f"{path}: sweep"
    spec = _mapping(spec, where)
    _check_keys(spec, ("key", "values"), where)
    key, values = str(spec.get("key")), spec.get("values")
    _check_override(key, defaults, where)
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: values: expected a non-empty list, got {values!r}")
    out: dict[str, Row] = {}
    for row in rows.values():
        if key in row.set:
            raise ConfigError(f"{path}: row {row.name!r}: sets the swept {key!r}; the sweep gives its values")
        for value in values:
            settings = {**row.set, key: value}
            config.validate(config.deep_merge(defaults, _nested(settings)), f"{where}: row {row.name!r}")
            name = f"{row.name}-{value}"
            out[name] = Row(name, f"{row.label}, {value}", settings, row.paper, row.name, value)
    return key, out, {row: f"{row}-{values[-1]}" for row in rows}


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


def row_params(grid: Grid, row: Row, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The whole params file `row` runs with at any one seed: `params` (the schema's defaults if None) plus its
    overrides."""
    params = config.Params().model_dump(mode="json") if params is None else params
    return config.deep_merge(dict(params), _nested(overrides(grid, row, 0, params)))


def effective(grid: Grid, row: Row) -> str:
    """`row_params` under the schema's defaults as canonical JSON: two rows with equal texts run the same
    experiment."""
    return json.dumps(row_params(grid, row), sort_keys=True)


def twins(grid: Grid, others: list[Grid] | None = None) -> dict[str, str]:
    """`<table>-<row>` of every row of another table (the shipped ones by default) that runs the same experiment as
    a row of `grid` -> that row. Such a row's experiment is restored whole from DVC's run cache when the other table
    ran it first, so nothing of it is tracked under its own name: its report reads the twin's runs."""
    mine = {effective(grid, row): row.name for row in grid.rows.values()}
    others = [load_grid(name) for name in grid_names()] if others is None else others
    return {
        f"{other.name}-{row.name}": mine[key]
        for other in others
        if other.name != grid.name
        for row in other.rows.values()
        if (key := effective(other, row)) in mine
    }


def training_steps(grid: Grid, row: Row, params: Mapping[str, Any]) -> tuple[int, ...]:
    """The row's `trainer.steps` of every training stage, in the params file's (the pipeline's) order. A seed's rows
    run in this order, shortest first: a row that trains the same model longer (Table 3's "not tuned" row after the
    tuned one) then resumes the shorter run's checkpoints instead of setting them aside and training afresh."""
    values = row_params(grid, row, params)
    return tuple(v["trainer"]["steps"] for v in values.values() if isinstance(v, dict) and "steps" in v.get("trainer", {}))  # fmt: skip


def exp_args(values: Mapping[str, Any]) -> list[str]:
    """`dvc exp run` arguments for the overrides: `-S key=value` each, values in YAML's spelling."""
    args = []
    for key, value in values.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        args += ["-S", f"{key}={text}"]
    return args


class GridError(RuntimeError, UserError):
    """A grid's runs cannot make a report: none finished, or they were scored by different evaluators."""


def exp_name(grid: Grid, row: str, seed: int) -> str:
    """The DVC experiment (and MLflow `dvc_experiment` tag) of one row at one seed: `<table>-<row>-s<seed>`."""
    return f"{grid.name}-{row}-s{seed}"


# ----------------------------------------------------------------------------------------------------------------
# Running a grid
# ----------------------------------------------------------------------------------------------------------------


def _git(args: list[str], cwd: str | Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise GridError(f"git {' '.join(args)} failed in {cwd}: {done.stderr.strip()}")
    return done.stdout


def run_grid(
    grid: Grid,
    seeds: int,
    cwd: str | Path = ".",
    dvc: str = "dvc",
    jobs: int = 1,
    env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Run every row at seeds 1..seeds as a named DVC experiment (`dvc exp run -n <table>-<row>-s<seed> -S …`, each
    from the committed params.yaml); the workspace is put back to the commit at the end. `jobs` 1 runs them one after
    the other in the workspace; more queues them all (`dvc exp run --queue`) and runs the queue `jobs` at a time
    (`--run-all --jobs`), each in a temporary copy of the repository, so a sweep's points then train from scratch
    instead of resuming the previous point's checkpoints. `env`: the experiments' environment (the CLI pins
    MLFLOW_TRACKING_URI to the repository's store, which a temporary copy would not find). An experiment the
    repository already holds is kept, so a killed grid resumes where it stopped; a failed one is reported and the
    others still run. Seed 0 is left to the params file's own run: every experiment then differs from it in every
    stage a seed reaches, so each one runs (and tracks) those stages, while the stages before them and the
    evaluators keep their outputs. Returns experiment name -> `ran`, `kept` or `failed (…)`."""
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: a grid needs at least 1 seed")
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: at least 1")
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
    pending: list[tuple[str, list[str]]] = []
    for seed in range(1, seeds + 1):
        for row in sorted(grid.rows.values(), key=lambda r: training_steps(grid, r, committed)):
            name = exp_name(grid, row.name, seed)
            if name in held:
                outcome[name] = "kept"
                print(f"{name}: kept (the repository holds it)", flush=True)
            else:
                pending.append((name, exp_args(overrides(grid, row, seed, committed))))
    queued = []
    try:
        for name, args in pending:
            _git(
                ["checkout", "HEAD", "--", "params.yaml"], cwd
            )  # the row's overrides on the committed params
            print(f"{name}: {'running' if jobs == 1 else 'queued'}", flush=True)
            command = [dvc, "exp", "run", *([] if jobs == 1 else ["--queue"]), "-n", name, *args]
            done = subprocess.run(command, cwd=cwd, env=env)
            if done.returncode != 0:
                outcome[name] = f"failed (exit {done.returncode})"
                print(f"{name}: failed (exit {done.returncode}); the grid goes on", flush=True)
            elif jobs == 1:
                outcome[name] = "ran"
            else:
                queued.append(name)
        if queued:
            subprocess.run([dvc, "exp", "run", "--run-all", "--jobs", str(jobs)], cwd=cwd, env=env)
            listed = subprocess.run(
                [dvc, "exp", "list", "--name-only"], cwd=cwd, capture_output=True, text=True
            )
            finished = set(listed.stdout.split())
            for name in queued:
                outcome[name] = "ran" if name in finished else f"failed (`{dvc} queue logs {name}`)"
    finally:
        _git(["checkout", "HEAD", "--", "params.yaml", "dvc.lock"], cwd)
        subprocess.run([dvc, "checkout", "--quiet"], cwd=cwd)  # the outputs of the commit, from DVC's cache
    return outcome
