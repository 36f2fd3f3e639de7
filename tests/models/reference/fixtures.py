"""The evaluator fixtures (DESIGN §10): key lists of the official checkpoints, synthetic weights rebuilt from them
by the fixtures' own `synth_weights.py`, and the reference toolkits' outputs under those weights."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch

FIXTURES = (
    Path(os.environ.get("VAFLOW_FIXTURES", Path(__file__).resolve().parents[4] / "shared" / "fixtures"))
    / "evaluators"
)


def keys(name: str) -> dict:
    """`<name>_keys.json`: {key: {shape, dtype}} of the official checkpoint, and what the file says of it."""
    return json.loads((FIXTURES / f"{name}_keys.json").read_text())


def synth_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The deterministic synthetic weights of `<name>_keys.json`, as the fixtures' `synth_weights.py` builds them."""
    spec = importlib.util.spec_from_file_location("synth_weights", FIXTURES / "synth_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.synth_state_dict(keys(name)["state_dict"])


def reference(name: str) -> dict:
    """`<name>_reference.pt`: the reference inputs and outputs."""
    return torch.load(FIXTURES / f"{name}_reference.pt", weights_only=True)
