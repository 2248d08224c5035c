"""Plain-Python pipeline: config, data, greedy stacking, evaluation, tracking and export."""
