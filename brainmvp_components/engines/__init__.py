"""BrainMVP engines."""
