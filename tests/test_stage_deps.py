"""Every stage's `deps` in dvc.yaml cover the code it runs: its script's import closure (`vaflow.code`).

Derived, not hand-kept: a module a stage imports but does not list would let `dvc repro` reuse results made by old
code (a decoding fix leaving stale latents in place); this test names the stage and the missing files.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from vaflow.code import code_hash, import_closure

ROOT = Path(__file__).resolve().parent.parent
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _script(cmd: str) -> str:
    found = re.findall(r"stages/\w+\.py", cmd)
    assert len(found) == 1, f"a stage runs one script: {cmd!r}"
    return found[0]


def _code_deps(stage: dict) -> list[str]:
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage["deps"]]
    return [d.rstrip("/") for d in deps if "${" not in d]


def uncovered(script: str, deps: list[str], root: Path = ROOT) -> list[str]:
    """Files of the script's import closure that no dep (a file, or a folder above it) covers."""
    files = [p.relative_to(root).as_posix() for p in import_closure(root / script, root)]
    return [f for f in files if not any(f == d or f.startswith(d + "/") for d in deps)]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_every_module_it_imports(name):
    stage = STAGES[name]
    missing = uncovered(_script(stage["cmd"]), _code_deps(stage))
    assert not missing, (
        f"dvc.yaml stage {name!r}: deps miss modules it imports: {missing} "
        "(`.venv/bin/python .ci/sync_stage_deps.py` rewrites every stage's code deps)"
    )


def test_the_closure_follows_imports_transitively_and_inside_functions(tmp_path):
    pkg = tmp_path / "vaflow"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("import numpy\n")
    (pkg / "lazy.py").write_text("def f():\n    from vaflow.sub.leaf import x\n")
    (pkg / "unused.py").write_text("")
    (tmp_path / "stages").mkdir()
    script = tmp_path / "stages" / "s.py"
    script.write_text("from vaflow import lazy\n")
    names = [p.relative_to(tmp_path).as_posix() for p in import_closure(script, tmp_path)]
    assert names == ["stages/s.py", "vaflow/__init__.py", "vaflow/lazy.py", "vaflow/sub/__init__.py",
                     "vaflow/sub/leaf.py"]  # fmt: skip
    assert uncovered("stages/s.py", ["stages/s.py", "vaflow/lazy.py", "vaflow/sub"], tmp_path) == [
        "vaflow/__init__.py"
    ]
    before = code_hash(import_closure(script, tmp_path), tmp_path)
    (pkg / "unused.py").write_text("# not imported: not the stage's code\n")
    assert code_hash(import_closure(script, tmp_path), tmp_path) == before
    (pkg / "sub" / "leaf.py").write_text("import numpy  # a comment is a change\n")
    assert code_hash(import_closure(script, tmp_path), tmp_path) != before


def test_dvc_yaml_holds_exactly_the_synced_deps():
    """No stale dep either (a module no longer imported would rerun the stage for nothing): dvc.yaml is what
    `.ci/sync_stage_deps.py` writes, and writing it again changes nothing."""
    spec = importlib.util.spec_from_file_location("sync_stage_deps", ROOT / ".ci" / "sync_stage_deps.py")
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    text = (ROOT / "dvc.yaml").read_text()
    new, changed = sync.synced(text)
    assert not changed, f"run `.venv/bin/python .ci/sync_stage_deps.py`: stages {changed} differ"
    assert new == text
