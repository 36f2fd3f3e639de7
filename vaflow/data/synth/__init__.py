"""The synthetic audio-visual world (DESIGN §3): short clips whose sound is caused by what is visible.

In full: docs/library.md, `vaflow.data.synth`.
"""

from vaflow.data.synth.classes import CLASSES, SynthClass
from vaflow.data.synth.world import INDEX_COLUMNS, SynthClip, clip_id, clip_label, generate, render_clip

__all__ = [
    "CLASSES",
    "INDEX_COLUMNS",
    "SynthClass",
    "SynthClip",
    "clip_id",
    "clip_label",
    "generate",
    "render_clip",
]
