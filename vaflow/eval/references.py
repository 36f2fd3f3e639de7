"""The table's reference rows that need the models (DESIGN §6): what the generator's row is read against.

- `ceiling`: the ground truth through the WaveVAE, i.e. each test clip's stored posterior mean decoded. No
  generator that emits WaveVAE latents can sound better than its own decoder: this row is the ceiling of every
  metric a WaveVAE-based row can reach.
- `prior`: the video prior's draw x_0 = μ + σ·ε of each clip, decoded directly, without the flow. It is the
  flow's starting point, drawn with exactly the ε the `sample` stage used (the same seed hash per clip), so the
  difference between this row and the generator's is what integrating Eq. 1 adds. (With the Gaussian prior, x_0
  is ε itself: decoded noise.)

Both come from one pass over the paired test shards (visual features + WaveVAE latents).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vaflow.data.pairs import SplitShards
from vaflow.generate.generator import Models, clip_seed, decode_audio, prior_noise

__all__ = ["ReferenceAudio", "reference_audio"]


@dataclass
class ReferenceAudio:
    """Decoded audio (N, samples) float32 of the two model-made reference rows, in `ids` order."""

    ids: list[str]
    ceiling: np.ndarray
    prior: np.ndarray
    sample_rate: int


@torch.no_grad()
def reference_audio(models: Models, split: SplitShards, seed: int, batch_size: int = 16) -> ReferenceAudio:
    """Decode every clip of a paired `split` (features and latents) twice: its latent mean (the ceiling) and its
    prior draw x_0 with ε from `clip_seed(seed, id, 0)` (the prior row). `seed` must be the sample stage's."""
    if split.latents is None:
        raise ValueError(
            "reference rows need the split read with its latents (pairs.open_split(..., latents))"
        )
    device = next(models.flow.parameters()).device
    shape = (models.latent_length, models.latent_dim)
    ids: list[str] = []
    ceiling: list[np.ndarray] = []
    prior: list[np.ndarray] = []
    batch: list[dict] = []

    def flush() -> None:
        mean = torch.from_numpy(np.stack([s["mean"] for s in batch]).astype(np.float32))  # (B, T_a, D_a)
        ceiling.append(decode_audio(models.vae, mean))
        x_v = torch.from_numpy(np.stack([s["feat"] for s in batch]).astype(np.float32)).to(device)
        eps = prior_noise([clip_seed(seed, s["id"], 0) for s in batch], shape)  # as the sample stage draws it
        x_0 = models.flow.draw_prior(x_v, (len(batch), *shape), eps=eps)  # normalised units (B, T_a, D_a)
        prior.append(decode_audio(models.vae, models.flow.denormalize(x_0)))
        ids.extend(s["id"] for s in batch)
        batch.clear()

    for sample in split.samples():
        batch.append(sample)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return ReferenceAudio(ids, np.concatenate(ceiling), np.concatenate(prior), models.sample_rate)
