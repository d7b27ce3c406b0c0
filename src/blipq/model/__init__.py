"""Everything that imports torch or transformers lives in this package."""

from blipq.model.checkpoint import resolve_checkpoint
from blipq.model.engine import CaptionEngine

__all__ = ["CaptionEngine", "resolve_checkpoint"]
