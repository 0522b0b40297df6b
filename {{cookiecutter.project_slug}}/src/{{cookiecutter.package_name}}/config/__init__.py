"""Checks of the composed Hydra config, run before Ray starts."""

from .validation import ConfigError, first_line, validate

__all__ = ["ConfigError", "first_line", "validate"]
