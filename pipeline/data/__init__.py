"""Data in: built-in data sets (builtin), file readers (readers), the seeded split (loading), the scaling
fitted on train (scaling), and chunked codes between layers (codes). Import from the submodules."""
