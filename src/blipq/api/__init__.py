"""The HTTP API: validates input, stores jobs, answers. It never runs the model."""

from blipq.api.app import create_app

__all__ = ["create_app"]
