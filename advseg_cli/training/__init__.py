"""The training stage: data loading, the training loop, checkpoints and the run folder."""
