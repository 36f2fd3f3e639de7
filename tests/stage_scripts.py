"""The stage scripts as modules, for the tests that call a stage's `main` or `run` in-process."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

STAGES = Path(__file__).resolve().parents[1] / "stages"


def load_stage(name: str) -> ModuleType:
    """Import `stages/<name>.py` as a module (stages are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", STAGES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
