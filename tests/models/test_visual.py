"""The encoder interface: registry, factory errors, weight hashes, frozen mode."""

from __future__ import annotations

import hashlib

import pytest

from vaflow.hashing import weights_hash
from vaflow.models.encoders import KINDS, VisualEncoder, build_encoder


def test_registry_lists_every_kind():
    assert set(KINDS) == {"clip", "cavp", "pixels"}
    for kind, cls in KINDS.items():
        assert issubclass(cls, VisualEncoder) and cls.kind == kind


def test_unknown_kind_and_option_are_named():
    with pytest.raises(ValueError, match="unknown visual encoder kind 'clap'.*'clip'"):
        build_encoder("clap")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['sise'\] for visual encoder 'pixels'"):
        build_encoder("pixels", sise=(4, 4))


def test_weight_hash_is_sha256_prefix(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"vaflow" * 1000)
    assert weights_hash(path) == hashlib.sha256(b"vaflow" * 1000).hexdigest()[:16]
    assert weights_hash(None) == "none"


def test_encoders_stay_in_eval_mode():
    enc = build_encoder("pixels")
    enc.train()
    assert not enc.training
