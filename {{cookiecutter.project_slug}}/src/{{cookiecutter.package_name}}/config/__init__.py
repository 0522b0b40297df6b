"""Checks of the composed Hydra config, run before Ray starts."""

from .validation import ConfigError, validate

__all__ = ["ConfigError", "validate"]
