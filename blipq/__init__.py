"""blipq: an image-captioning service built on Salesforce BLIP."""

__version__ = "0.1.0"
