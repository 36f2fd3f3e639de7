"""Generation with a trained VAFlow (paper §3.3, Inference): the `sample` stage and `vaflow generate`.

- `core`: the loaded models (`load_models` refuses a VAFlow trained on other features or another WaveVAE),
  per-clip prior draws seeded by (seed, clip id, k) so batching changes nothing, the guided solve, the WaveVAE
  decode, 16-bit wav files.
- `samples`: a split's features → `<id>.wav` (+ muxed previews, index.csv), resumable in a spec folder
  (`vaflow.data.journal`).
- `video`: any user video → the same video with generated audio, in cross-faded windows of the training length.
"""

from vaflow.generate.generator import Models, Sampler, default_device, load_models
from vaflow.generate.samples import SampleReport, sample_spec, sample_split
from vaflow.generate.video import OVERLAP, VideoResult, generate_video

__all__ = [
    "OVERLAP",
    "Models",
    "SampleReport",
    "Sampler",
    "VideoResult",
    "default_device",
    "generate_video",
    "load_models",
    "sample_spec",
    "sample_split",
]
