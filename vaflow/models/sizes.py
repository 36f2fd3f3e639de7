"""DiT size registry: name -> width, depth, heads, feed-forward multiplier. Torch-free (config validation imports it).

Paper §4.3 scales the velocity estimator to 142M, 264M, 527M and 1.05B parameters "through width/depth scaling of
DiT blocks" and gives only the totals. `dit_xl` keeps Stable Audio Open 1.0's width 1536 (24 heads of 64); every
paper size keeps head dim 64 and SAO's feed-forward multiplier 4. Counted by `vaflow.models.dit.count_parameters`
with cross-attention at `PAPER_COUNT_DIMS` (SAO VAE latents D_a = 64, CLIP ViT-L/14 features D_v = 768):

| size   | width | depth | heads | parameters    | paper  | off    |
| ------ | ----- | ----- | ----- | ------------- | ------ | ------ |
| tiny   |    32 |     2 |     2 |        81,088 |        |        |
| small  |   128 |     2 |     4 |       840,064 |        |        |
| dit_s  |   768 |    12 |    12 |   143,763,584 | 142M   | +1.2%  |
| dit_b  |   960 |    14 |    15 |   261,202,688 | 264M   | -1.1%  |
| dit_l  |  1280 |    16 |    20 |   529,351,808 | 527M   | +0.4%  |
| dit_xl |  1536 |    22 |    24 | 1,045,091,456 | 1.05B  | -0.5%  |

Each block holds ≈ 20·width² parameters (self-attention 4, cross-attention 4, SwiGLU feed-forward 12); without
cross-attention (Table 4's no-CA row) ≈ 16·width². SAO's own depth 24 at width 1536 would count 1.14B here, because
our cross-attention keys/values read the width-wide cond embedding (SAO reads 768-wide tokens), hence depth 22.
`small` at the embedded default's dims (D_a = 16, D_v = 64) has 737,664 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

# (latent_dim, cond_dim) at which the table above is counted: SAO 1.0 VAE latents, CLIP ViT-L/14 features.
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
    """The CPU default: one step of batch 32 at 126 tokens in ~0.35 s on 2 cores (depth 4 took 0.73 s), so stages
    2 and 3 fit the default DAG's few CPU minutes."""
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
    """Paper §4.3 1.05B: SAO 1.0's width 1536 and 24 heads, depth 22 (see the module docstring)."""
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
