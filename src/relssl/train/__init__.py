"""Pretraining: batches, the training loop, checkpoints, and the `relssl train` run."""
