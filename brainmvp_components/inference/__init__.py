"""Running trained models on cases: batch inference and pre-training inference."""
