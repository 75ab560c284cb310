"""Studies that run bundles many times: label efficiency."""
