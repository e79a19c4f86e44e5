"""Training engine: trainer, checkpoints, distributed setup."""
