"""Operating-system plumbing: signals, process ids, the quiet runtime."""
