"""The one shared trainer: DDP, AMP, EMA, checkpoints, tracking."""
