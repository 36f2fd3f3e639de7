"""Visual encoders: open_clip CLIP, CAVP-style, pixels."""

from __future__ import annotations

from typing import Any

from vaflow.models.cavp import CAVP, CAVPConfig, CAVPEncoder, log_mel, retrieval_topk, temporal_discrimination
from vaflow.models.clip import CLIPEncoder
from vaflow.models.pixels import PixelEncoder
from vaflow.models.visual import VisualEncoder

__all__ = [
    "KINDS",
    "build_encoder",
    "VisualEncoder",
    "CLIPEncoder",
    "CAVP",
    "CAVPConfig",
    "CAVPEncoder",
    "PixelEncoder",
    "log_mel",
    "retrieval_topk",
    "temporal_discrimination",
]

# Feature kind -> encoder class; also the list config validation checks `kind` against.
KINDS: dict[str, type[VisualEncoder]] = {
    CLIPEncoder.kind: CLIPEncoder,  # semantic features (paper §4.5), options: model_name, weights, cache_dir, ...
    CAVPEncoder.kind: CAVPEncoder,  # temporally-enhanced semantic features, options: checkpoint, batch_size, device
    PixelEncoder.kind: PixelEncoder,  # raw-pixel stand-in for reconstruction features, options: fps, input_size, size
}


def build_encoder(kind: str, **options: Any) -> VisualEncoder:
    """Build the encoder registered as `kind` with its constructor options; an unknown kind or option is named."""
    if kind not in KINDS:
        raise ValueError(f"unknown visual encoder kind {kind!r}; known kinds: {sorted(KINDS)}")
    cls = KINDS[kind]
    try:
        return cls(**options)
    except TypeError as e:
        import inspect

        accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise TypeError(
                f"unknown option(s) {unknown} for visual encoder {kind!r}; accepted: {accepted}"
            ) from e
        raise
