"""Linear probes on codes (the layers' and the raw input's) and the L-BFGS that fits them."""
