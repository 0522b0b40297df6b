"""Serving a trained checkpoint over HTTP with Ray Serve: `python train.py serve=local`."""

from .launch import serve_checkpoint

__all__ = ["serve_checkpoint"]
