"""Typed pipeline parameters, torch-free: one section per stage, validated, with derived lengths computed once.

- `section`: the section base (`Section`), `ConfigError`, `jsonable`/`flatten` (configs as JSON values);
- `pipeline`: clip geometry, sources and the synthetic world, the WaveVAE, visual encoders, extraction;
- `method`: VAFlow's sections (alignment VAE, flow, the three training stages, sampling, evaluation);
- `trainer`: the shared trainer's section; `sizes`: the size tables of every network;
- `params`: `Params` (all of params.yaml), `load`, `validate`, presets.

Every section is reachable as `vaflow.config.<Name>`.
"""

from vaflow.config.method import (
    EvaluateConfig,
    EvaluatorsConfig,
    FlowConfig,
    JointTuneConfig,
    ReferenceEvaluatorsConfig,
    SampleConfig,
    TrainAlignConfig,
    TrainFlowConfig,
    ValidationConfig,
)
from vaflow.config.params import PRESET_DIR, Params, deep_merge, dump, load, preset, presets, validate
from vaflow.config.pipeline import (
    SOURCES,
    SPLITS,
    AudioSetV2ASource,
    AudioVAEConfig,
    CAVPOptions,
    ClipConfig,
    CLIPOptions,
    EncodeAudioConfig,
    ExtractVisualConfig,
    FolderSource,
    PixelOptions,
    PrepareConfig,
    SynthConfig,
    VGGSoundSource,
    VisualEncoderConfig,
)
from vaflow.config.section import ConfigError, Section
from vaflow.config.trainer import ClipTrainerConfig, TrainerConfig

__all__ = [
    "PRESET_DIR",
    "SOURCES",
    "SPLITS",
    "AudioSetV2ASource",
    "AudioVAEConfig",
    "CAVPOptions",
    "CLIPOptions",
    "ClipConfig",
    "ConfigError",
    "EncodeAudioConfig",
    "EvaluateConfig",
    "EvaluatorsConfig",
    "ExtractVisualConfig",
    "FlowConfig",
    "FolderSource",
    "JointTuneConfig",
    "Params",
    "PixelOptions",
    "PrepareConfig",
    "ReferenceEvaluatorsConfig",
    "SampleConfig",
    "Section",
    "SynthConfig",
    "TrainAlignConfig",
    "TrainFlowConfig",
    "ClipTrainerConfig",
    "TrainerConfig",
    "VGGSoundSource",
    "ValidationConfig",
    "VisualEncoderConfig",
    "deep_merge",
    "dump",
    "load",
    "preset",
    "presets",
    "validate",
]
