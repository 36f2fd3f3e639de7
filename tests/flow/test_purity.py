"""vaflow.flow is pure: it imports torch and the standard library, never a model, data or config module."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

FLOW = Path(__file__).resolve().parents[2] / "vaflow" / "flow"
PACKAGE = "vaflow.flow"
ALLOWED_THIRD_PARTY = {"torch"}


def _imported_modules(tree: ast.AST, package: str = PACKAGE) -> list[str]:
    """Absolute module names imported anywhere in a module of `package` (relative imports resolved)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # `from ..x import y` climbs level − 1 packages above this one
                parts = package.split(".")
                base = parts[: len(parts) - (node.level - 1)]
                names.append(".".join(base + ([node.module] if node.module else [])))
            else:
                names.append(node.module)
    return names


def _is_allowed(name: str) -> bool:
    top = name.split(".")[0]
    if name == PACKAGE or name.startswith(PACKAGE + "."):
        return True
    return top != "vaflow" and (top in ALLOWED_THIRD_PARTY or top in sys.stdlib_module_names)


def test_flow_imports_only_torch_stdlib_and_itself():
    files = sorted(FLOW.rglob("*.py"))
    assert len(files) >= 4
    bad = [
        f"{path.relative_to(FLOW.parents[1])}: {name}"
        for path in files
        for name in _imported_modules(ast.parse(path.read_text(), filename=str(path)))
        if not _is_allowed(name)
    ]
    assert not bad, "vaflow.flow must import only torch and the standard library:\n" + "\n".join(bad)


def test_the_check_catches_escapes():
    src = "from ..models import dit\nfrom . import path\nfrom .solvers import solve\nimport vaflow.data\n"
    names = _imported_modules(ast.parse(src))
    assert names == ["vaflow.models", "vaflow.flow", "vaflow.flow.solvers", "vaflow.data"]
    assert [_is_allowed(n) for n in names] == [False, True, True, False]
    assert not _is_allowed("numpy") and _is_allowed("torch.nn") and _is_allowed("dataclasses")
