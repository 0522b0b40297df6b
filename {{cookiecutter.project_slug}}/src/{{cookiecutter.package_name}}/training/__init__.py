"""Training under Ray Train: the driver (`run`), the per-worker loop (`worker`), callbacks."""

from .run import train

__all__ = ["train"]
