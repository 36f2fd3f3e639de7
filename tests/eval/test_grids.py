"""Paper tables as experiment grids (vaflow.eval.grids): the shipped tables load, bad ones name file, row and key."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from vaflow import config
from vaflow.eval import grids

GOOD = {
    "title": "t",
    "metrics": {"fd": "lower", "acc": "higher"},
    "rows": {
        "base": {"label": "VAFlow", "set": {}, "paper": {"fd": 87.7}},
        "gauss": {"set": {"flow.prior": "gaussian"}},
    },
    "claims": [{"row": "base", "than": "gauss"}, {"row": "base", "than": "gauss", "metrics": "acc"}],
}


def write_table(tmp_path, data) -> str:
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def test_the_shipped_tables_load_with_the_papers_rows():
    assert {"table3", "table4"} <= set(grids.grid_names())
    t3 = grids.load_grid("table3")
    assert list(t3.rows) == ["gaussian", "untuned", "tuned"] and t3.rows["tuned"].paper["fd"] == 87.7
    assert t3.metrics == {"fd": "lower", "is": "higher", "acc": "higher", "ib_va": "higher"}
    t4 = grids.load_grid("table4")
    assert t4.claims[-1] == grids.Claim("cond", "no_ca", ("acc", "ib_va"))
    f3 = grids.load_grid("figure3")
    assert f3.sweep == "train_flow.trainer.steps" and {r.series for r in f3.rows.values()} == {"diffusion", "flow", "vaflow"}  # fmt: skip
    assert {"table1", "figure4", "cfg", "nfe"} <= set(grids.grid_names())
    for name in grids.grid_names():  # every shipped table loads, and each claim compares two of its rows
        grid = grids.load_grid(name)
        assert grid.claims and all({c.row, c.than} <= set(grid.rows) for c in grid.claims), name


def test_a_row_at_a_seed_is_its_overrides_plus_every_stage_seed(tmp_path):
    grid = grids.load_grid(write_table(tmp_path, GOOD))
    values = grids.overrides(grid, grid.rows["gauss"], 3)
    assert values == {"flow.prior": "gaussian", **dict.fromkeys(grids.SEED_KEYS, 3)}
    assert grids.exp_args({"flow.prior": "gaussian", "sample.cfg": 0.0, "flow.cross_attention": False}) == [
        "-S", "flow.prior=gaussian", "-S", "sample.cfg=0.0", "-S", "flow.cross_attention=false"
    ]  # fmt: skip
    assert grid.claims[1].on == ("acc",) and grid.claims[0].on == ("fd", "acc")
    # Every override is a real params key: the params file accepts each row's values.
    for key in values:
        section, *rest = key.split(".")
        assert section in config.Params.model_fields, key


def test_a_table_that_keeps_a_total_moves_a_rows_unspent_steps_to_the_first_free_key(tmp_path):
    keys = ["train_flow.trainer.steps", "joint_tune.trainer.steps"]
    data = {**GOOD, "equal_total": keys}
    data["rows"] = {**GOOD["rows"], "untuned": {"set": {"joint_tune.trainer.steps": 0}}}
    grid = grids.load_grid(write_table(tmp_path, data))
    params = config.preset("bench").model_dump(mode="json")
    flow, tune = params["train_flow"]["trainer"]["steps"], params["joint_tune"]["trainer"]["steps"]
    assert tune > 0
    untuned = grids.overrides(grid, grid.rows["untuned"], 1, params)
    assert untuned["train_flow.trainer.steps"] == flow + tune and untuned["joint_tune.trainer.steps"] == 0
    assert "train_flow.trainer.steps" not in grids.overrides(grid, grid.rows["base"], 1, params)
    # The shipped Table 3 gives its "not tuned" row the tuned row's total.
    t3 = grids.load_grid("table3")
    assert t3.equal_total == tuple(keys)
    assert grids.overrides(t3, t3.rows["untuned"], 2, params)["train_flow.trainer.steps"] == flow + tune
    # A seed's rows run shortest training first, so "not tuned" resumes the tuned row's stage-2 checkpoints.
    order = sorted(t3.rows.values(), key=lambda r: grids.training_steps(t3, r, params))
    assert [r.name for r in order] == ["gaussian", "tuned", "untuned"]
    # A row that spends more than the total, or sets every key short of it, is refused at load.
    data["rows"]["long"] = {"set": {"joint_tune.trainer.steps": 10**6}}
    with pytest.raises(config.ConfigError, match=r"row 'long': train_flow.trainer.steps \+ joint_tune"):
        grids.load_grid(write_table(tmp_path, data))
    data["rows"]["long"] = {"set": {"joint_tune.trainer.steps": 0, "train_flow.trainer.steps": 1}}
    with pytest.raises(config.ConfigError, match="leave one of them unset"):
        grids.load_grid(write_table(tmp_path, data))
    data["rows"].pop("long")
    data["equal_total"] = ["flow.prior"]
    with pytest.raises(config.ConfigError, match="'flow.prior' is not an integer parameter"):
        grids.load_grid(write_table(tmp_path, data))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"rows": {"x": {"set": {"flow.priro": "gaussian"}}}},
            r"row 'x': unknown parameter 'flow.priro' \(did you mean 'prior'\?\)",
        ),  # fmt: skip
        ({"rows": {"x": {"set": {"flow": "gaussian"}}}}, r"row 'x': 'flow' is a section, not a parameter"),
        ({"rows": {"x": {"set": {"flow.prior": "uniform"}}}}, r"row 'x': flow.prior"),
        ({"rows": {"x": {"set": {"sample.seed": 1}}}}, r"row 'x': 'sample.seed' is set per seed by the grid"),
        ({"rows": {"x": {"paper": {"kl": 1.0}}}}, r"row 'x': paper: 'kl' is not a metric"),
        ({"metrics": {"fd": "smaller"}}, r"metrics: fd: 'smaller', expected one of lower, higher"),
        ({"claims": [{"row": "base", "than": "nope"}]}, r"claims\[0\]: than: 'nope' is not a row"),
        (
            {"claims": [{"row": "base", "than": "gauss", "metrics": ["is"]}]},
            r"claims\[0\]: metrics: 'is' is not",
        ),
        (
            {"claims": [{"row": "base", "than": "gauss", "on": ["fd"]}]},
            r"claims\[0\]: unknown key 'on'; known: row, than, metrics",
        ),
        ({"rows": {}}, r"rows: a table needs at least one row"),
    ],
)
def test_a_bad_table_names_the_file_the_row_and_the_key(tmp_path, change, message):
    path = write_table(tmp_path, {**GOOD, **change})
    with pytest.raises(config.ConfigError, match=message) as err:
        grids.load_grid(path)
    assert path in str(err.value)


def test_an_unknown_table_name_lists_the_tables():
    with pytest.raises(config.ConfigError, match=r"unknown table 'table5'.*tables: .*table3, table4"):
        grids.load_grid("table5")


def _fake_dvc(tmp_path, held: str, failing: str):
    """A `dvc` that lists `held` experiments, records every call, and fails `exp run` of `failing`."""
    script = tmp_path / "dvc"
    script.write_text(f"""#!/bin/sh
echo "$@" >> {tmp_path}/calls
if [ "$1 $2" = "exp list" ]; then printf '{held}\\n'; exit 0; fi
case "$*" in *"-n {failing} "*) exit 3;; esac
exit 0
""")
    script.chmod(0o755)
    return str(script)


def _committed_repo(tmp_path):
    """A git repository whose commit holds a params.yaml and a dvc.lock."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text("sample: {seed: 0}\n")
    (repo / "dvc.lock").write_text("schema: '2.0'\n")
    for cmd in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
    ):
        subprocess.run(["git", *cmd], cwd=repo, check=True)
    return repo


def test_a_grid_runs_each_row_at_each_seed_and_keeps_what_the_repository_holds(tmp_path, capsys):
    grid = grids.load_grid(write_table(tmp_path, GOOD))
    dvc = _fake_dvc(tmp_path, "t-base-s1", "t-gauss-s2")
    repo = _committed_repo(tmp_path)
    (repo / "params.yaml").write_text("sample: {seed: 9}\n")
    with pytest.raises(grids.GridError, match="uncommitted changes"):
        grids.run_grid(grid, 2, cwd=repo, dvc=dvc)
    subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=repo, check=True)
    outcome = grids.run_grid(grid, 2, cwd=repo, dvc=dvc)
    assert outcome == {
        "t-base-s1": "kept",
        "t-gauss-s1": "ran",
        "t-base-s2": "ran",
        "t-gauss-s2": "failed (exit 3)",
    }
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == "exp list --name-only" and len(calls) == 5  # the held experiment is not run again
    seeds = " ".join(f"-S {key}=1" for key in grids.SEED_KEYS)
    assert calls[1] == f"exp run -n t-gauss-s1 -S flow.prior=gaussian {seeds}"
    assert calls[-1] == "checkout --quiet"  # the commit's outputs back in the workspace
    assert "t-gauss-s2: failed (exit 3); the grid goes on" in capsys.readouterr().out
    with pytest.raises(config.ConfigError, match="--seeds 0"):
        grids.run_grid(grid, 0, cwd=repo, dvc=dvc)
    with pytest.raises(config.ConfigError, match="--jobs 0"):
        grids.run_grid(grid, 1, cwd=repo, dvc=dvc, jobs=0)


def test_with_jobs_a_grid_queues_its_experiments_and_runs_the_queue_in_parallel(tmp_path):
    """A `dvc` whose queue finishes every queued experiment but `t-gauss-s2` (its queued task fails)."""
    grid = grids.load_grid(write_table(tmp_path, GOOD))
    script = tmp_path / "dvc"
    script.write_text(f"""#!/bin/sh
echo "$@" >> {tmp_path}/calls
touch {tmp_path}/held {tmp_path}/queued
if [ "$1 $2" = "exp list" ]; then cat {tmp_path}/held; exit 0; fi
if [ "$3" = "--queue" ]; then echo "$5" >> {tmp_path}/queued; exit 0; fi
if [ "$3" = "--run-all" ]; then grep -v t-gauss-s2 {tmp_path}/queued >> {tmp_path}/held; exit 0; fi
exit 0
""")
    script.chmod(0o755)
    (tmp_path / "held").write_text("t-base-s1\n")
    repo = _committed_repo(tmp_path)
    outcome = grids.run_grid(grid, 2, cwd=repo, dvc=str(script), jobs=2)
    assert outcome == {
        "t-base-s1": "kept",
        "t-gauss-s1": "ran",
        "t-base-s2": "ran",
        "t-gauss-s2": f"failed (`{script} queue logs t-gauss-s2`)",
    }
    calls = (tmp_path / "calls").read_text().splitlines()
    assert [c.split(" -S")[0] for c in calls[1:4]] == [f"exp run --queue -n t-{n}" for n in ("gauss-s1", "base-s2", "gauss-s2")]  # fmt: skip
    assert calls[4:] == ["exp run --run-all --jobs 2", "exp list --name-only", "checkout --quiet"]
