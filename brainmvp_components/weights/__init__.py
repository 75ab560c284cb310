"""Weights in and out: the authors' checkpoints, pre-trained encoder loading, resumable checkpoints, releases."""
