"""Training: JEPA pretraining loop, schedules, checkpoints, data-parallel setup, crop loader."""
