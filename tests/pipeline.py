"""Helpers of the end-to-end tests (their repository fixtures, `repo`, `first_repro` and `clone`, are in conftest.py:
the micro pipeline built once per test session, under a file lock shared by the xdist workers, and copied for each module and each test that changes it)."""

import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COPIED = ["dvc.yaml", "stages", "vaflow", "configs", "data/pretrained", "pyproject.toml", ".dvcignore"]


def _run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _set_param(work, section, key, value):
    params = yaml.safe_load((work / "params.yaml").read_text())
    node = params[section]
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _stages_run(out):
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
