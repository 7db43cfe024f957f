"""SCAI, Simple Cloud AI: a self-hosted image classification and object detection service."""

__version__ = "0.1.0"
