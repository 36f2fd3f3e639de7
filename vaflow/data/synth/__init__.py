"""The synthetic audio-visual world (DESIGN §3): short clips whose sound is caused by what is visible.

Every clip shows one object of a class (optionally a second object of another class, and silent grey
distractors). Each class is a distinct visual object with a distinct sound:

- event classes make a sound at visible events (a ball touching the floor, a lamp flashing, ...), at random
  times drawn per clip, so timing can only be read from the video;
- continuous classes tie a sound parameter to a visual quantity (hum pitch to a balloon's height, engine pitch
  to a car's speed, ...).

Rendering is pure and deterministic in (seed, split, index): `render_clip` returns arrays plus a JSON-ready
ground truth (event onsets, parameter curves) that only the oracle metrics read. `generate` writes the world
exactly like a real source: `media/<id>.mp4` (H.264 + AAC), `truth/<id>.json` and `index.csv`.

Event onsets are snapped to video frames (time k / fps): the visual event is drawn exactly on frame k and the
sound starts at sample round(k / fps · sample_rate), so temporal alignment is exact up to the codecs.

Modules: `scene` (time axes, the canvas and drawing, random timing, sound primitives), `classes` (the eight
classes and the silent distractors), `world` (one clip, and the whole world on disk).
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
