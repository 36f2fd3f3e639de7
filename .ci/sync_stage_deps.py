"""Rewrite the code deps of every stage in dvc.yaml from its script's import closure (`vaflow.code`).

    .venv/bin/python .ci/sync_stage_deps.py          # rewrite dvc.yaml in place
    .venv/bin/python .ci/sync_stage_deps.py --check  # exit 1 and name the stages whose deps differ

A stage's code deps are its script and every project module the script imports, directly or transitively; a
folder of the package whose every module is imported is listed as the folder. Data deps (entries with `${…}`) are
kept as they are, after the code. The rest of dvc.yaml (comments included) is left untouched.
`tests/test_stage_deps.py` fails when a stage's deps miss part of its closure.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vaflow.code import import_closure  # noqa: E402


def code_deps(script: str) -> list[str]:
    """The closure of `script` as dvc.yaml entries: the script first, then modules and whole folders, sorted."""
    files = {p.relative_to(ROOT).as_posix() for p in import_closure(ROOT / script, ROOT)}
    entries = set(files)
    folders: dict[str, set[str]] = {}
    for name in files:
        folders.setdefault(str(Path(name).parent), set()).add(name)
    for folder, used in folders.items():
        if not folder.startswith("vaflow/"):
            continue
        every = {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).glob("*.py")}
        if every and every <= used:
            entries = (entries - every) | {folder}
    return sorted(entries, key=lambda name: (not name.startswith("stages/"), name))


def synced(text: str) -> tuple[str, list[str]]:
    """dvc.yaml's text with every stage's code deps rewritten -> (new text, names of the stages that changed)."""
    stages = yaml.safe_load(text)["stages"]
    lines, out, changed = text.split("\n"), [], []
    stage, i = None, 0
    while i < len(lines):
        line = lines[i]
        match = re.match(r"^  (\w+):\s*$", line)
        if match and match.group(1) in stages:
            stage = match.group(1)
        if stage is None or line != "    deps:":
            out.append(line)
            i += 1
            continue
        (script,) = re.findall(r"stages/\w+\.py", stages[stage]["cmd"])
        old, data = [], []
        i += 1
        while i < len(lines) and lines[i].startswith("      - "):
            (data if "${" in lines[i] else old).append(lines[i])
            i += 1
        new = [f"      - {entry}" for entry in code_deps(script)]
        if new != old:
            changed.append(stage)
        out += [line, *new, *data]
    return "\n".join(out), changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stages whose deps differ; write nothing")
    args = parser.parse_args()
    path = ROOT / "dvc.yaml"
    text, changed = synced(path.read_text())
    if args.check:
        if changed:
            sys.exit(f"dvc.yaml: code deps differ from the import closure in stages {changed}")
        return
    path.write_text(text)
    print(f"dvc.yaml: code deps rewritten in {changed or 'no stage'}")


if __name__ == "__main__":
    main()
