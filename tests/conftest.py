"""Suite-wide process settings, applied before any test module imports torch."""

from pipeline.process.runtime import quiet_runtime

quiet_runtime()
