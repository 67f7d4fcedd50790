"""Small built-in models for the demo and tests (random weights, no downloads)."""

from .video_dit import TinyVideoDiT

__all__ = ["TinyVideoDiT"]
