"""The one shared trainer: DDP, AMP, EMA, checkpoints, tracking."""

# `vaflow.config` embeds `TrainerConfig` and `vaflow.train.config` subclasses `vaflow.config.Section`: importing
# `vaflow.config` first lets it define `Section` before it imports `vaflow.train.config`, whichever module a
# caller imports first.
import vaflow.config  # noqa: F401
