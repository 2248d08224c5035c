"""The run core: greedy layer-wise stacking, the layer store, fine-tuning, hooks and results."""
