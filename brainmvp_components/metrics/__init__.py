"""Measures and their reports: segmentation, classification, pre-training and the learning report."""
