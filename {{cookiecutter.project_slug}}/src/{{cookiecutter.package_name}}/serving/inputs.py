"""Checking the JSON `inputs` of a request, and saying exactly what is wrong with them.

Checked by hand rather than left to numpy: `np.asarray` would quietly turn "1" and true into
numbers. Values are checked again after preprocessing, where a huge but finite number can
overflow float32 and give NaN probabilities, which cannot even be written back as JSON.
"""

import math
import reprlib
from typing import Any

import numpy as np


class InvalidInput(ValueError):
    """A request the server refuses; `status_code` is the HTTP status to answer with."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


def to_features(rows: list[Any], input_shape: tuple[int, ...], max_rows: int) -> np.ndarray:
    """`rows` as float64 features shaped (len(rows), number of features).

    Each row is either flat (the feature values in order) or nested as `input_shape`, e.g. an
    8x8 grey image as 64 numbers or as [[[...8 numbers], ...8 lists]].
    """
    if not rows:
        raise InvalidInput("`inputs` is empty: send at least one row.")
    if len(rows) > max_rows:
        raise InvalidInput(
            f"`inputs` has {len(rows)} rows; this server takes at most {max_rows} per request. "
            f"Split the batch into several requests.",
            status_code=413,
        )
    size = math.prod(input_shape)
    values: list[float] = []
    for index, row in enumerate(rows):
        nested = isinstance(row, list) and bool(row) and isinstance(row[0], list)
        shape = input_shape if nested else (size,)
        _collect(row, shape, f"inputs[{index}]", values, input_shape)
    return np.asarray(values, dtype=np.float64).reshape(len(rows), size)


def check_finite(batch: np.ndarray) -> None:
    """Refuse rows that preprocessing pushed beyond float32's range."""
    bad = ~np.isfinite(batch.reshape(len(batch), -1)).all(axis=1)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise InvalidInput(
            f"inputs[{index}] holds values too large for the model once preprocessed; send "
            f"features in the range the model was trained on."
        )


def _collect(
    node: Any,
    shape: tuple[int, ...],
    where: str,
    values: list[float],
    input_shape: tuple[int, ...],
) -> None:
    """Append the numbers of `node` to `values`, checking it is a list nested as `shape`."""
    if not isinstance(node, list) or len(node) != shape[0]:
        found = f"a list of {len(node)}" if isinstance(node, list) else type(node).__name__
        raise InvalidInput(
            f"{where} should be a list of {shape[0]}, got {found}. Each row is "
            f"{math.prod(input_shape)} numbers, flat or nested as {list(input_shape)}."
        )
    if len(shape) > 1:
        for index, child in enumerate(node):
            _collect(child, shape[1:], f"{where}[{index}]", values, input_shape)
        return
    for index, value in enumerate(node):
        # bool is a subclass of int, and JSON true is not a feature value.
        if type(value) not in (int, float):
            raise InvalidInput(f"{where}[{index}] is {reprlib.repr(value)}, not a number.")
        try:
            number = float(value)
        except OverflowError:  # an integer with hundreds of digits
            number = math.inf
        if not math.isfinite(number):
            raise InvalidInput(f"{where}[{index}] is {reprlib.repr(value)}: not a finite number.")
        values.append(number)
