"""The size tables of the networks: the WaveVAE's configuration and sizes, the DiT's sizes.

Torch-free, so that params validation (`vaflow.config`) reads sizes, hops and latent widths without importing a
model (`vaflow.models.wavevae` and `vaflow.models.dit` build from these). The DiT sizes against the paper's
parameter counts: docs/design.md, "Network sizes".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vaflow.config.section import DictConfig

__all__ = [
    "SIZES",
    "WaveVAEConfig",
    "get_config",
    "wavevae_base",
    "wavevae_sao",
    "wavevae_small",
    "wavevae_tiny",
    "DIT_SIZES",
    "PAPER_COUNT_DIMS",
    "PAPER_PARAMETERS",
    "DiTSize",
    "check_dit_shape",
]

# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WaveVAEConfig(DictConfig):
    """Architecture of an Oobleck WaveVAE; passed whole into every constructor."""

    # `to_dict` is JSON-shaped (stored in safetensors metadata by `save_wavevae`).
    tuples_as_lists = True

    # Audio channels in and out (SAO 1.0 is stereo; the toy pipeline is mono).
    audio_channels: int = 1
    # Width of the first stage; stage i has channels * c_mults[i] channels (SAO: 128).
    channels: int = 16
    # Channel multipliers per down-sampling stage; an implicit leading 1 is the input stage (SAO: 1,2,4,8,16).
    c_mults: tuple[int, ...] = (1, 2, 4, 8)
    # Down-sampling factor per stage, one per c_mult; even so that decode(encode(x)) keeps x's length.
    strides: tuple[int, ...] = (2, 4, 4, 8)
    # Latent channels D (the decoder's input); the encoder outputs 2·D (mean and scale).
    latent_dim: int = 16
    # SnakeBeta activations (SAO: true); false uses ELU as stable-audio-tools does.
    use_snake: bool = True
    # Tanh on the decoder output; SAO 1.0 has none (its output can exceed [-1, 1] slightly).
    final_tanh: bool = False
    # Audio rate the VAE was trained at; it does not change the weights, only how clips are cut.
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        # Tuples, so that a config read from JSON/YAML (lists) compares equal and stays hashable.
        object.__setattr__(self, "c_mults", tuple(int(c) for c in self.c_mults))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if len(self.c_mults) != len(self.strides) or not self.strides:
            raise ValueError(
                f"WaveVAEConfig: c_mults {self.c_mults} and strides {self.strides} need the same, non-zero length"
            )
        if any(s < 2 or s % 2 for s in self.strides):
            raise ValueError(
                f"WaveVAEConfig: strides {self.strides} must be even (≥ 2) so that lengths are exact"
            )
        for name in ("audio_channels", "channels", "latent_dim", "sample_rate"):
            if getattr(self, name) < 1:
                raise ValueError(f"WaveVAEConfig: {name} must be ≥ 1, got {getattr(self, name)}")
        if any(c < 1 for c in self.c_mults):
            raise ValueError(f"WaveVAEConfig: c_mults {self.c_mults} must be ≥ 1")

    @property
    def hop(self) -> int:
        """Audio samples per latent frame (SAO 1.0: 2·4·4·8·8 = 2048)."""
        return math.prod(self.strides)

    @property
    def encoder_latent_dim(self) -> int:
        """Encoder output channels: mean and scale, D each."""
        return 2 * self.latent_dim

    @property
    def frame_rate(self) -> float:
        """Latent frames per second (SAO 1.0: 44100 / 2048 ≈ 21.5)."""
        return self.sample_rate / self.hop


# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------


def wavevae_sao() -> WaveVAEConfig:
    """Stable Audio Open 1.0's VAE: 44.1 kHz stereo, hop 2048, 64 latent channels (156.1M params)."""
    return WaveVAEConfig(
        audio_channels=2,
        channels=128,
        c_mults=(1, 2, 4, 8, 16),
        strides=(2, 4, 4, 8, 8),
        latent_dim=64,
        sample_rate=44100,
    )


def wavevae_base() -> WaveVAEConfig:
    """Mono 16 kHz, hop 256, 32 latent channels (2.43M params): a CPU/GPU size for richer audio."""
    return WaveVAEConfig(channels=32, c_mults=(1, 2, 4, 8), strides=(2, 4, 4, 8), latent_dim=32)


def wavevae_small() -> WaveVAEConfig:
    """Mono 16 kHz, hop 256, 16 latent channels (0.61M params): the embedded default, trains in CPU minutes."""
    return WaveVAEConfig(channels=16, c_mults=(1, 2, 4, 8), strides=(2, 4, 4, 8), latent_dim=16)


def wavevae_tiny() -> WaveVAEConfig:
    """Mono, hop 8, 4 latent channels (10.7K params): the reference fixture's architecture, for tests."""
    return WaveVAEConfig(channels=8, c_mults=(1, 2), strides=(2, 4), latent_dim=4)


# Name -> config; config validation checks names against it and reads hop/latent_dim from it.
SIZES: dict[str, WaveVAEConfig] = {
    "sao": wavevae_sao(),
    "base": wavevae_base(),
    "small": wavevae_small(),
    "tiny": wavevae_tiny(),
}


def get_config(name_or_config: str | WaveVAEConfig) -> WaveVAEConfig:
    """A size name from SIZES, or a config passed through."""
    if isinstance(name_or_config, WaveVAEConfig):
        return name_or_config
    if name_or_config not in SIZES:
        raise ValueError(f"unknown WaveVAE size {name_or_config!r}; known sizes: {sorted(SIZES)}")
    return SIZES[name_or_config]


# (latent_dim, cond_dim) at which docs/design.md's DiT table is counted: SAO 1.0 VAE latents, CLIP ViT-L/14 features.
PAPER_COUNT_DIMS = (64, 768)


def check_dit_shape(owner: str, width: int, depth: int, heads: int, ff_mult: int) -> None:
    """Raise ValueError (naming the numbers) unless width splits into `heads` heads of an even dim (RoPE)."""
    for name, value in (("width", width), ("depth", depth), ("heads", heads), ("ff_mult", ff_mult)):
        if value < 1:
            raise ValueError(f"{owner}: {name} must be ≥ 1, got {value}")
    if width % heads:
        raise ValueError(f"{owner}: width {width} is not divisible by heads {heads}")
    if (width // heads) % 2:
        raise ValueError(
            f"{owner}: head dim {width // heads} (width {width} / heads {heads}) must be even for RoPE"
        )


@dataclass(frozen=True)
class DiTSize:
    """The shape of a DiT, independent of the data dims it is built for."""

    width: int
    depth: int
    heads: int
    ff_mult: int = 4

    def __post_init__(self) -> None:
        check_dit_shape("DiTSize", self.width, self.depth, self.heads, self.ff_mult)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


def dit_tiny() -> DiTSize:
    """For tests: forwards and a few Adam steps in milliseconds."""
    return DiTSize(width=32, depth=2, heads=2)


def dit_small() -> DiTSize:
    """The CPU default, sized so that stages 2 and 3 fit the default DAG's few CPU minutes."""
    return DiTSize(width=128, depth=2, heads=4)


def dit_s() -> DiTSize:
    """Paper §4.3 142M (the VAFlow-CLIP-142M of §4.2): DiT-B's shape."""
    return DiTSize(width=768, depth=12, heads=12)


def dit_b() -> DiTSize:
    """Paper §4.3 264M."""
    return DiTSize(width=960, depth=14, heads=15)


def dit_l() -> DiTSize:
    """Paper §4.3 527M."""
    return DiTSize(width=1280, depth=16, heads=20)


def dit_xl() -> DiTSize:
    """Paper §4.3 1.05B: SAO 1.0's width 1536 and 24 heads, depth 22 (docs/design.md, "Network sizes")."""
    return DiTSize(width=1536, depth=22, heads=24)


# Name -> size; config validation checks `model.size`-style names against it without importing torch.
DIT_SIZES: dict[str, DiTSize] = {
    "tiny": dit_tiny(),
    "small": dit_small(),
    "dit_s": dit_s(),
    "dit_b": dit_b(),
    "dit_l": dit_l(),
    "dit_xl": dit_xl(),
}

# Paper §4.3 parameter totals of the four scales, for tests and reports.
PAPER_PARAMETERS: dict[str, float] = {"dit_s": 142e6, "dit_b": 264e6, "dit_l": 527e6, "dit_xl": 1.05e9}
