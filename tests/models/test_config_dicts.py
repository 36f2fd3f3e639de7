"""`to_dict`/`from_dict` of the networks' configs: the same dicts as each class wrote before sharing
`DictConfig` (tuples kept or listed as each did), exact round trips through JSON, and the pretrained WaveVAEs'
metadata still read."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from safetensors import safe_open

from vaflow.config.sizes import SIZES, WaveVAEConfig
from vaflow.generate.generator import Sampler
from vaflow.models.align_vae import AlignVAEConfig
from vaflow.models.cavp import CAVPConfig
from vaflow.models.dit import DiTConfig, dit_config
from vaflow.models.evaluators import EvaluatorConfig
from vaflow.models.vaflow import FlowSettings

PRETRAINED = Path(__file__).resolve().parents[2] / "data" / "pretrained"

CONFIGS = {
    "wavevae": SIZES["small"],
    "dit": dit_config("tiny", 16, 64),
    "align": AlignVAEConfig(feature_dim=64, feature_length=40, latent_dim=16, latent_length=63),
    "flow": FlowSettings(),
    "cavp": CAVPConfig(),
    "evaluator": EvaluatorConfig(),
    "sampler": Sampler(solver="euler", steps=10, cfg=2.0, cond="video"),
}


def _former(config) -> dict:
    """What each class's own `to_dict` returned: asdict, and the WaveVAE's tuples as lists."""
    d = dataclasses.asdict(config)
    if isinstance(config, WaveVAEConfig):
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
    return d


@pytest.mark.parametrize("name", CONFIGS)
def test_to_dict_is_the_former_dict(name):
    config = CONFIGS[name]
    d = config.to_dict()
    assert d == _former(config)
    assert [type(v) for v in d.values()] == [type(v) for v in _former(config).values()]


@pytest.mark.parametrize("name", CONFIGS)
def test_from_dict_round_trips_through_json(name):
    config = CONFIGS[name]
    assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert type(config).from_dict(config.to_dict()) == config


@pytest.mark.parametrize("name", CONFIGS)
def test_from_dict_names_unknown_keys(name):
    config = CONFIGS[name]
    with pytest.raises(ValueError, match=rf"{type(config).__name__}: unknown keys \['zzz'\]"):
        type(config).from_dict({**config.to_dict(), "zzz": 1})


@pytest.mark.parametrize("folder", sorted(p.name for p in PRETRAINED.glob("*") if p.is_dir()))
def test_pretrained_wavevae_metadata_still_reads(folder):
    with safe_open(str(PRETRAINED / folder / "wavevae.safetensors"), framework="pt") as f:
        stored = f.metadata()["wavevae_config"]
    config = WaveVAEConfig.from_dict(json.loads(stored))
    assert json.dumps(config.to_dict(), sort_keys=True) == stored


def test_dit_config_is_a_dict_config():
    assert isinstance(DiTConfig.from_dict(CONFIGS["dit"].to_dict()), DiTConfig)
