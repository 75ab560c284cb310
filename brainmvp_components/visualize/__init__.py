"""PNG figures: case montages, template montages, overlays, reconstructions, training curves."""
