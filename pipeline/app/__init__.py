"""The command line and what it needs around a run: preflight checks, progress lines, servers."""
