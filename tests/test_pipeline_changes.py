"""End to end, on copies of the micro pipeline: zero-step joint tuning, changed data and code, failing stages, and a
paper table as DVC experiments."""

import json
import re
import subprocess
import sys

import pytest
import yaml

from vaflow.code import import_closure
from vaflow.eval import grid_report, grids

from .pipeline import _run, _set_param, _stages_run


def test_joint_tune_with_zero_steps_passes_the_flow_model_through(clone):
    work, env = clone
    _set_param(work, "joint_tune", "trainer.steps", 0)
    assert _stages_run(_run(["dvc", "repro"], work, env)) == {"joint_tune", "sample", "evaluate"}
    models = work / "data" / "models"
    assert (models / "vaflow" / "vaflow.safetensors").read_bytes() == (
        models / "flow" / "vaflow.safetensors"
    ).read_bytes()
    final = json.loads((work / "metrics" / "joint_tune.json").read_text())
    flow = json.loads((work / "metrics" / "train_flow.json").read_text())
    # The untouched model scores stage 2's flow loss on the same val clips; the KL term comes on top (Eq. 9).
    assert final["tuned_steps"] == 0 and final["val_flow"] == pytest.approx(flow["val_flow"], rel=1e-5)
    assert final["val_loss"] > final["val_flow"]


def test_changing_a_synth_param_reruns_prepare(clone):
    work, env = clone
    status = json.loads(_run(["dvc", "status", "--json"], work, env))
    assert status == {}
    _set_param(work, "synth", "seed", 1)
    status = json.loads(_run(["dvc", "status", "--json"], work, env))
    assert "prepare" in status, status


def _outputs(work):
    """Every metrics file and shard of a repository, by relative path → bytes."""
    files = [*(work / "metrics").glob("*.json"), *(work / "data").glob("*/*/*.tar")]
    return {p.relative_to(work).as_posix(): p.read_bytes() for p in files}


def test_changed_code_reruns_exactly_its_importers_and_the_rerun_is_bit_identical(repo, clone):
    """A comment appended to vaflow/data/media/process.py: `dvc status` names exactly the stages whose import
    closure holds it (derived here from the sources, as the stages' deps are); `dvc repro` reruns them under their
    code's new identity (fresh extraction specs, fresh checkpoint folders: nothing of the old code is resumed) and
    the stages downstream of the changed specs; the code being the same in effect, every rerun writes
    byte-identical metrics and shards (two runs of a stage on the CPU agree to the byte)."""
    work, env = clone
    before = _outputs(work)
    stages = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
    media = work / "vaflow" / "data" / "media" / "process.py"
    importers = {
        name
        for name, stage in stages.items()
        if media in import_closure(work / re.search(r"stages/\w+\.py", stage["cmd"])[0], work)
    }
    assert {"prepare", "encode_audio", "extract_visual"} <= importers
    media.write_text(media.read_text() + "# a comment: new code as far as a rerun knows\n")
    status = json.loads(_run(["dvc", "status", "--json"], work, env))
    assert set(status) == importers, status
    specs = {p: json.loads((work / "data" / p / "spec.json").read_text()) for p in ("latents", "features")}
    checkpoints = set((work / "data" / "checkpoints").iterdir())
    assert _stages_run(_run(["dvc", "repro"], work, env)) >= importers
    for folder, spec in specs.items():
        assert json.loads((work / "data" / folder / "spec.json").read_text())["code"] != spec["code"], folder
    # New checkpoint folders: the importers' (their code changed) and those whose inputs' identity changed.
    retrained = {p.name.split("-")[0] for p in set((work / "data" / "checkpoints").iterdir()) - checkpoints}
    assert retrained >= importers & {"audio_vae", "visual_encoder", "train_align", "train_flow", "joint_tune"}
    after = _outputs(work)
    assert after.keys() == before.keys()
    assert [k for k in before if before[k] != after[k]] == []  # deterministic on the CPU, to the byte


def _kept(work):
    """Every output a failed stage must keep: metrics, the table, the samples and the model folders."""
    files = [*(work / "metrics").iterdir(), work / "reports" / "table.md", *(work / "data").glob("*/*/*")]
    return {p.relative_to(work).as_posix(): p.read_bytes() for p in files if p.is_file()}


def _fails(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, f"{' '.join(cmd)} should fail:\n{proc.stdout}\n{proc.stderr}"
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]


def test_a_stage_that_fails_its_checks_keeps_every_output_and_the_pipeline_stays_up_to_date(clone):
    """DVC deletes no output before a stage (all are `persist`); a stage stopped by its params, its tracking
    server or its inputs leaves what the last good run wrote, and once the cause is gone nothing is stale."""
    work, env = clone
    kept = _kept(work)
    unreachable = {**env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    (line,) = _fails(["dvc", "repro", "-f", "-s", "evaluate"], work, unreachable)
    assert "MLflow tracking server http://127.0.0.1:9 is unreachable" in line
    params = (work / "params.yaml").read_text()
    _set_param(work, "sample", "steps", "many")
    (line,) = _fails(["dvc", "repro", "-s", "sample"], work, env)
    assert "sample.steps" in line
    (work / "params.yaml").write_text(params)
    (work / "data" / "features" / "spec.json").rename(work / "spec.json")
    _fails(["dvc", "repro", "-f", "-s", "train_align"], work, env)
    (work / "spec.json").rename(work / "data" / "features" / "spec.json")
    assert _kept(work) == kept
    assert "up to date" in _run(["dvc", "status"], work, env)


def test_a_table_runs_as_dvc_experiments_and_reports_from_mlflow(clone):
    """`vaflow tables run` on a two-row table at two seeds through real `dvc exp run`: the stages before the
    seeded ones and the evaluators never run again; `vaflow tables report` finds the four runs in MLflow and writes
    both rows (mean ± interval, the paper's figure) and a verdict; a second `run` keeps all four."""
    work, env = clone
    table = {
        "title": "mini",
        "metrics": {"fd": "lower", "acc": "higher"},
        "rows": {
            "vaflow": {"label": "VAFlow", "set": {}, "paper": {"fd": 87.7, "acc": 88.1}},
            "no_cfg": {"label": "no CFG", "set": {"sample.cfg": 0.0}, "paper": {"fd": 133.8}},
        },
        "claims": [{"row": "vaflow", "than": "no_cfg"}],
    }
    (work / "configs" / "tables" / "mini.yaml").write_text(yaml.safe_dump(table, sort_keys=False))
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "a table"], work, env)
    tables = [sys.executable, "-m", "vaflow.cli", "tables"]
    out = _run([*tables, "run", "mini", "--seeds", "2"], work, env)
    ran = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]
    upstream = {"prepare", "audio_vae", "encode_audio", "visual_encoder", "extract_visual", "evaluators"}
    assert not upstream & set(ran), ran
    # Seed s of both rows shares its trained models: the second row of a seed only samples and evaluates.
    assert [ran.count(s) for s in ("train_align", "train_flow", "joint_tune", "sample", "evaluate")] == [
        2,
        2,
        2,
        4,
        4,
    ]
    assert _run(["git", "status", "--porcelain", "params.yaml", "dvc.lock"], work, env) == ""
    assert "table run" in _run([*tables, "report", "mini"], work, env)
    text = (work / "reports" / "mini.md").read_text()
    clips = r"\| \d+(–\d+ of \d+)? \| 2/2 \|"  # clips scored (of the 8 test clips), finished seeds
    assert re.search(
        r"\| VAFlow \| [\d.]+ ± [\d.]+ \(87\.7\) \| [\d.]+ ± [\d.]+ \(88\.1\) .*" + clips, text
    ), text
    assert re.search(r"\| no CFG \| [\d.]+ ± [\d.]+ \(133\.8\) \| [\d.]+ ± [\d.]+ .*" + clips, text), text
    assert not (work / "reports" / "mini.png").exists()  # a table, not a figure
    # Each evaluate run carries its FD embeddings, from which rows are compared on the clips all runs kept.
    runs = grid_report.collect(
        grids.load_grid(work / "configs" / "tables" / "mini.yaml"), env["MLFLOW_TRACKING_URI"], "vaflow"
    )
    assert {len(run.emb) for by_seed in runs.values() for run in by_seed.values()} <= set(range(2, 9))
    assert all(
        run.scored == len(run.emb) and run.clips == 8 for by_seed in runs.values() for run in by_seed.values()
    )
    assert re.search(r"- VAFlow beats no CFG on fd: \*\*(supports|refutes|cannot tell)\*\*", text), text
    again = _run([*tables, "run", "mini", "--seeds", "2"], work, env)
    assert again.count(": kept") == 4 and "Running stage" not in again
