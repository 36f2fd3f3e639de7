"""The library's floors (docs/design.md, "Where things live"): no import runs up a floor, none goes in a circle,
and `vaflow.config` loads without torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from vaflow.code import imported_files

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"


def floors() -> dict[str, int]:
    """Place (a folder ending in / or a file) -> floor, read from the design doc's table."""
    section = DESIGN.read_text().split("## 0. Where things live", 1)[1].split("\n## ", 1)[0]
    places: dict[str, int] = {}
    for floor, cell in re.findall(r"^\| (\d+) \| (.+?) \|", section, re.M):
        for place in re.findall(r"`([^`]+)`", cell):
            places[place] = int(floor)
    return places


def floor_of(path: Path, places: dict[str, int], root: Path = ROOT) -> int:
    rel = path.relative_to(root).as_posix()
    matches = [p for p in places if rel == p or (p.endswith("/") and rel.startswith(p))]
    assert matches, f"{rel} is on no floor of docs/design.md's table"
    return places[max(matches, key=len)]


def library(root: Path = ROOT) -> list[Path]:
    return sorted((root / "vaflow").rglob("*.py"))


def up_imports(places: dict[str, int], root: Path = ROOT) -> list[str]:
    """Every import of a module on a higher floor than the importer's, as a readable line."""
    up = []
    for path in library(root):
        here = floor_of(path, places, root)
        for target in imported_files(path, root):
            there = floor_of(target, places, root)
            if there > here:
                rel, target_rel = path.relative_to(root), target.relative_to(root)
                up.append(f"{rel} (floor {here}) imports {target_rel} (floor {there})")
    return up


def test_the_table_names_every_place_and_every_module_has_a_floor():
    places = floors()
    assert len(set(places.values())) >= 8, places
    for place in places:
        assert (ROOT / place).exists(), f"docs/design.md names {place}, which does not exist"
    for path in library():
        floor_of(path, places)


def test_no_import_runs_up_a_floor():
    up = up_imports(floors())
    assert not up, "\n".join(up)


def test_an_import_up_a_floor_is_caught(tmp_path):
    """The check itself can fail: a config module importing a model (also inside a function) is reported."""
    for rel, text in {
        "vaflow/__init__.py": "",
        "vaflow/config/__init__.py": "",
        "vaflow/config/section.py": "def f():\n    from vaflow.models import dit\n",
        "vaflow/models/__init__.py": "",
        "vaflow/models/dit.py": "from vaflow.config import section\n",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    places = {"vaflow/__init__.py": 0, "vaflow/config/": 1, "vaflow/models/": 2}
    assert sorted(up_imports(places, tmp_path)) == [
        "vaflow/config/section.py (floor 1) imports vaflow/models/__init__.py (floor 2)",
        "vaflow/config/section.py (floor 1) imports vaflow/models/dit.py (floor 2)",
    ]


def test_no_import_circle():
    graph = {path: {t for t in imported_files(path, ROOT) if t != path} for path in library()}

    # A package's __init__ importing its own submodules, which import the package, is how Python packages work;
    # a circle is a cycle between modules that are not a package and its own __init__.
    def edges(path):
        for target in graph[path]:
            if target.name == "__init__.py" and path.is_relative_to(target.parent):
                continue
            yield target

    state: dict[Path, int] = {}
    cycle: list[Path] = []

    def visit(node: Path, stack: list[Path]) -> bool:
        state[node] = 1
        for nxt in edges(node):
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*stack, nxt]):
                return True
        state[node] = 2
        return False

    for start in graph:
        if state.get(start) is None and visit(start, [start]):
            break
    assert not cycle, " -> ".join(p.relative_to(ROOT).as_posix() for p in cycle)


def test_config_imports_no_torch():
    code = "import sys, vaflow.config, vaflow.config.sizes; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
