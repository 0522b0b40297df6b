"""Packages whose names are imported when first used (PEP 562 module `__getattr__`)."""

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A `__getattr__` for `package`'s `__init__`: `exports` maps each name to the module of the
    package that defines it, imported the first time the name is asked for."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f".{exports[name]}", package), name)

    return __getattr__
