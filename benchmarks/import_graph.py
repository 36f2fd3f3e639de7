"""The library's import graph by floor (docs/design.md, "Where things live"), counted and drawn.

    python benchmarks/import_graph.py [--out docs/imports.png]

Rooms are the places of the design doc's table (a folder, or a file on floor 0), stacked by floor; an arrow is
"imports from", drawn with the number of imports it stands for. Prints the counts: places, modules, arrows, arrows
that run up a floor, circles between places. Nothing is imported from the library: imports are read from the
sources (`vaflow.code.imported_files`).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_layout import floor_of, floors, library  # noqa: E402 (the one reading of the floor table)
from vaflow.code import imported_files  # noqa: E402


def place_of(path: Path, places: dict[str, int]) -> str:
    rel = path.relative_to(ROOT).as_posix()
    return max((p for p in places if rel == p or (p.endswith("/") and rel.startswith(p))), key=len)


def place_graph(places: dict[str, int]) -> tuple[Counter, Counter]:
    """(modules per place, imports per (importer place, imported place)), same-place imports left out."""
    modules: Counter = Counter()
    edges: Counter = Counter()
    for path in library():
        here = place_of(path, places)
        modules[here] += 1
        for target in imported_files(path, ROOT):
            there = place_of(target, places)
            if there != here and there != "vaflow/__init__.py":  # every import runs the package's __init__
                edges[here, there] += 1
    return modules, edges


def circles(edges: Counter) -> list[tuple[str, str]]:
    """Pairs of places that import each other, directly or through others."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    return sorted({tuple(sorted((a, b))) for a in graph for b in reach(a) if a != b and a in reach(b)})


def draw(places: dict[str, int], modules: Counter, edges: Counter, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_floor: dict[int, list[str]] = {}
    for place, floor in sorted(places.items(), key=lambda kv: kv[0]):
        by_floor.setdefault(floor, []).append(place)
    pos = {}
    for floor, row in by_floor.items():
        for i, place in enumerate(row):
            pos[place] = ((i + 1) / (len(row) + 1), floor)
    fig, ax = plt.subplots(figsize=(12, 9))
    for (a, b), n in edges.items():
        (xa, ya), (xb, yb) = pos[a], pos[b]
        color = "tab:red" if places[b] > places[a] else "0.55"
        ax.annotate("", xy=(xb, yb + 0.18), xytext=(xa, ya - 0.18),
                    arrowprops={"arrowstyle": "->", "color": color, "lw": 0.6 + 0.15 * n, "alpha": 0.7,
                                "connectionstyle": f"arc3,rad={0.25 if abs(ya - yb) > 1 else 0.0}"})  # fmt: skip
    for place, (x, y) in pos.items():
        label = f"{place.removeprefix('vaflow/')}\n{modules[place]} module{'s' * (modules[place] != 1)}"
        ax.text(x, y, label, ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.3"})  # fmt: skip
    ax.set_ylim(-0.7, max(by_floor) + 0.7)
    ax.set_xlim(0, 1)
    ax.set_yticks(sorted(by_floor))
    ax.set_ylabel("floor")
    ax.set_xticks([])
    ax.set_title("vaflow: imports between places (grey: down a floor or across; red: up a floor)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "imports.png"))
    args = parser.parse_args()
    places = floors()
    modules, edges = place_graph(places)
    up = [(a, b) for a, b in edges if places[b] > places[a]]
    found = circles(edges)
    print(f"places {len(places)}, floors {len(set(places.values()))}, modules {sum(modules.values())}, "
          f"arrows {len(edges)} ({sum(edges.values())} imports), arrows up a floor {len(up)}, circles {len(found)}")  # fmt: skip
    for a, b in up:
        print(f"  up: {a} -> {b} ({edges[a, b]})")
    for a, b in found:
        print(f"  circle: {a} <-> {b}")
    assert all(floor_of(p, places) is not None for p in library())
    draw(places, modules, edges, Path(args.out))
    print(f"drawn: {args.out}")


if __name__ == "__main__":
    main()
