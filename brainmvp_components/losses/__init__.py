"""BrainMVP losses."""
