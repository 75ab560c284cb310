"""Shared utilities: atomic file writers and small runtime helpers."""
