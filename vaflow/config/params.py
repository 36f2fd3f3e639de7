"""All of `params.yaml` as one validated `Params`, its loading with messages that name every bad key, and presets.

`params.yaml` is the embedded default and is exactly `Params()` written out (see `vaflow preset`). Presets in
`configs/` are overlays: only the keys they change, merged onto the defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError, model_validator

from vaflow.config.method import (
    EvaluateConfig,
    EvaluatorsConfig,
    FlowConfig,
    JointTuneConfig,
    SampleConfig,
    TrainAlignConfig,
    TrainFlowConfig,
)
from vaflow.config.pipeline import (
    AudioVAEConfig,
    ClipConfig,
    EncodeAudioConfig,
    ExtractVisualConfig,
    PrepareConfig,
    SynthConfig,
    VisualEncoderConfig,
)
from vaflow.config.section import ConfigError, Section
from vaflow.errors import did_you_mean

PRESET_DIR = Path(__file__).resolve().parents[2] / "configs"

# --------------------------------------------------------------------------------------------
# The whole file
# --------------------------------------------------------------------------------------------


class Params(Section):
    """All of `params.yaml`."""

    clip: ClipConfig = ClipConfig()
    synth: SynthConfig = SynthConfig()
    prepare: PrepareConfig = PrepareConfig()
    audio_vae: AudioVAEConfig = AudioVAEConfig()
    encode_audio: EncodeAudioConfig = EncodeAudioConfig()
    visual_encoder: VisualEncoderConfig = VisualEncoderConfig()
    extract_visual: ExtractVisualConfig = ExtractVisualConfig()
    train_align: TrainAlignConfig = TrainAlignConfig()
    flow: FlowConfig = FlowConfig()
    train_flow: TrainFlowConfig = TrainFlowConfig()
    joint_tune: JointTuneConfig = JointTuneConfig()
    sample: SampleConfig = SampleConfig()
    evaluators: EvaluatorsConfig = EvaluatorsConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="after")
    def _vae_rate_matches_clip(self) -> Params:
        # A trained VAE learns at clip.sample_rate; an imported one has its rate baked into its weights.
        if self.audio_vae.mode != "import":
            return self
        from vaflow.config.sizes import SIZES

        rate = SIZES[self.audio_vae.size].sample_rate
        if rate != self.clip.sample_rate:
            raise ValueError(
                f"audio_vae.size '{self.audio_vae.size}' runs at {rate} Hz but clip.sample_rate is"
                f" {self.clip.sample_rate}: set clip.sample_rate to {rate} or pick another size"
            )
        return self

    @model_validator(mode="after")
    def _synth_covers_clip(self) -> Params:
        if "synth" in self.prepare.sources and self.synth.duration < self.clip.duration:
            raise ValueError(
                f"synth.duration ({self.synth.duration}) is shorter than clip.duration ({self.clip.duration}):"
                " every synthetic clip would be rejected"
            )
        return self

    @model_validator(mode="after")
    def _stages_read_prepared_sources(self) -> Params:
        for stage in ("train_align", "train_flow", "joint_tune"):
            for name in getattr(self, stage).sources:
                if name not in self.prepare.sources:
                    raise ValueError(
                        f"{stage}.sources: {name!r} is not a prepared source{did_you_mean(name, self.prepare.sources)}"
                        f"; prepare.sources is {list(self.prepare.sources)}"
                    )
        return self

    @model_validator(mode="after")
    def _shards_pair_by_position(self) -> Params:
        # The flow reads audio shard i with visual shard i (vaflow.data.pairs): both must cut the clip list alike.
        if self.encode_audio.per_shard != self.extract_visual.per_shard:
            raise ValueError(
                f"encode_audio.per_shard ({self.encode_audio.per_shard}) and extract_visual.per_shard "
                f"({self.extract_visual.per_shard}) must agree: audio and visual shards are paired by position"
            )
        return self


# --------------------------------------------------------------------------------------------
# Loading, validation messages, presets
# --------------------------------------------------------------------------------------------


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names valid at `loc` (the parent of a bad key) inside `model`."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = field.annotation if field else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return []
    return list(model.model_fields)


def _format_errors(err: ValidationError, model: type[BaseModel], source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            valid = _valid_keys(model, loc[:-1])
            hint = did_you_mean(str(loc[-1]), valid) or f" (valid keys: {', '.join(valid)})"
            lines.append(f"{source}: {key}: unknown key{hint}")
        else:
            value = e.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"{source}: {key}: {e['msg'].removeprefix('Value error, ')}{shown}")
    return "\n".join(lines)


def validate(data: dict[str, Any] | None, source: str = "params") -> Params:
    """Validate a params mapping; raises ConfigError naming each bad key (and the nearest valid key for typos)."""
    try:
        return Params.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(_format_errors(err, Params, source)) from None


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return validate(data, str(path))


def deep_merge(base: dict, overlay: dict) -> dict:
    """`overlay` merged into a copy of `base`, recursing into nested mappings."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def presets() -> list[str]:
    """Names of the presets shipped in `configs/` plus `default`."""
    return ["default", *sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))]


def preset(name: str) -> Params:
    """The defaults with the overlay `configs/<name>.yaml` applied (`default` applies none). An overlay may start
    from another preset (`extends: vggsound`): that one is applied first, so a preset lists only what it adds."""
    return validate(
        _overlaid(name, ()), "defaults" if name == "default" else str(PRESET_DIR / f"{name}.yaml")
    )


def _overlaid(name: str, seen: tuple[str, ...]) -> dict[str, Any]:
    if name == "default":
        return Params().model_dump(mode="json")
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        where = f" (extended by {seen[-1]})" if seen else ""
        raise ConfigError(
            f"unknown preset '{name}'{where}{did_you_mean(name, presets())}; available: {', '.join(presets())}"
        )
    if name in seen:
        raise ConfigError(f"{path}: presets extend each other in a circle: {' -> '.join([*seen, name])}")
    overlay = yaml.safe_load(path.read_text()) or {}
    if not isinstance(overlay, dict):
        raise ConfigError(f"{path}: expected a mapping of params sections, got {type(overlay).__name__}")
    base = overlay.pop("extends", "default")
    return deep_merge(_overlaid(str(base), (*seen, name)), overlay)


def dump(params: Params) -> str:
    """`params` as the YAML text of a full params file."""
    header = "# vaflow parameters: the embedded default. Switch presets with `vaflow preset NAME`.\n"
    return header + yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)
