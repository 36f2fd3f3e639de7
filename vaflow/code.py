"""Code identity: which of the project's source files a stage runs, and one hash of them (DESIGN §4).

A stage's result depends on its params, its inputs and its code. DVC tracks the first two; for the third, a
stage script's *import closure* — the script and every `vaflow` module it imports, directly or transitively,
including imports inside functions — is found by reading the sources (`ast`, nothing is imported), so it cannot
drift from the code:

- `tests/test_stage_deps.py` checks that every stage's `deps` in dvc.yaml cover its closure;
- training stages key their resumable checkpoint folders on the closure's hash as well as their config, and
  extraction stages write it into their `spec.json`, so changed code never resumes or reuses old results.

"The same code" means byte-identical files of the closure: editing a comment counts as a change (as it does for
DVC's own file hashes); files the stage does not import do not.
"""

from __future__ import annotations

import ast
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from vaflow.errors import UserError

__all__ = [
    "PACKAGE",
    "CodeError",
    "check_checkout",
    "code_hash",
    "import_closure",
    "imported_files",
    "package_root",
    "stage_code",
]

PACKAGE = "vaflow"


class CodeError(RuntimeError, UserError):
    """A stage script that is not part of the vaflow package it imports."""


def package_root() -> Path:
    """The folder that holds the `vaflow` package (the repository root in a checkout)."""
    return Path(__file__).resolve().parent.parent


def _module_file(root: Path, name: str) -> Path | None:
    """The source file of module `name` (a.b.c) under `root`, or None when it is not a project module."""
    base = root.joinpath(*name.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _imported_names(path: Path, root: Path) -> set[str]:
    """Every dotted module name `path` imports (absolute and relative, at any depth of the file)."""
    rel = path.resolve().relative_to(root)
    package = list(rel.parts[:-1])  # the package a relative import starts from (an __init__ is its own)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] + ([node.module] if node.module else [])
                module = ".".join(base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def check_checkout(script: str | os.PathLike, root: str | os.PathLike | None = None) -> None:
    """Raise CodeError when `script` is not in the checkout whose `vaflow` is imported (`root`), which happens
    when another checkout's editable install comes first on the path: the stage would run that one's code."""
    root = Path(root or package_root()).resolve()
    script = Path(script).resolve()
    if not script.is_relative_to(root):
        raise CodeError(
            f"{script} imports the vaflow of another checkout, {root / PACKAGE} (an editable install of it comes "
            f"first); run `bash .ci/setup` in {script.parent.parent} (or use its .venv) to run its own code"
        )


def import_closure(script: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Path]:
    """`script` and every `vaflow` source file it imports transitively, sorted; `root` holds the package.

    Importing `a.b.c` also runs `a/__init__.py` and `a/b/__init__.py`, so those are part of the closure.
    """
    root = Path(root or package_root()).resolve()
    check_checkout(script, root)
    seen: set[Path] = set()
    todo = [Path(script).resolve()]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(found for found in imported_files(path, root) if found not in seen)
    return sorted(seen)


def imported_files(path: str | os.PathLike, root: str | os.PathLike | None = None) -> set[Path]:
    """The `vaflow` source files `path` imports directly, with the `__init__.py` of every package on the way."""
    root = Path(root or package_root()).resolve()
    found: set[Path] = set()
    for name in _imported_names(Path(path).resolve(), root):
        parts = name.split(".")
        if parts[0] != PACKAGE:
            continue
        for depth in range(1, len(parts) + 1):
            module = _module_file(root, ".".join(parts[:depth]))
            if module is not None:
                found.add(module)
    return found


def code_hash(files: Iterable[str | os.PathLike], root: str | os.PathLike | None = None) -> str:
    """sha256 (16 hex digits) of the files' paths relative to `root` and their bytes, in path order."""
    root = Path(root or package_root()).resolve()
    digest = hashlib.sha256()
    for path in sorted(Path(f).resolve() for f in files):
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def stage_code(script: str | os.PathLike) -> str:
    """The code identity of a stage: `code_hash` of its script's `import_closure`."""
    return code_hash(import_closure(script))
