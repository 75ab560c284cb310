"""Ignite event handlers for training runs: exports, previews, curves."""
