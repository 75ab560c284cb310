"""BrainMVP networks."""
