"""Suite-wide settings that must be in place before torch is imported."""

import os

# Spinning OpenMP waiters made small layers 5-20x slower whenever the other core was busy (Makefile sets it too).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
