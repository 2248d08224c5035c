"""Kept for encoder versions registered before pipeline/tracking/ existed: their model code imports this path."""

from pipeline.tracking.pyfunc import EncoderModel

__all__ = ["EncoderModel"]
