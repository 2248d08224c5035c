"""Using a trained encoder: export to other formats, and the scikit-learn transformer."""
