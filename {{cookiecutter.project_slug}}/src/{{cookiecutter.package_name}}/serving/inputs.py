"""What POST /predict takes, stated once: checked here, and written into the OpenAPI schema.

`InputSpec` is the contract for one served model: how one input may be nested, the range of
its numbers, how many inputs a request may hold. `request_schema()` states it as JSON Schema
(/openapi.json) and `check()` enforces exactly that, so a request is accepted if and only if the
schema says it is valid, and each refusal says what is wrong.

Checked by hand rather than left to numpy: `np.asarray` would quietly turn "1" and true into
numbers. Values are checked again after preprocessing and after the forward pass (app.py): the
ranges keep preprocessed values within float32, but a network can still overflow on values far
outside its training data, and NaN cannot even be written back as JSON.
"""

import json
import math
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)
# Standardised values are kept this far below FLOAT32_MAX, against float64 rounding on the way.
_STANDARDISED_MAX = FLOAT32_MAX * (1 - 2**-20)
# A schema's example request is left out when one input has more numbers than this.
_MAX_EXAMPLE_SIZE = 256
EXAMPLE_BODY = '{"inputs": [[...], ...]}'  # for messages


class InvalidInput(ValueError):
    """A request the server refuses; `status_code` is the HTTP status to answer with."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


def accepted_shapes(shapes: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """Every way one input may be nested: its numbers flat, or as one of `shapes` (the input
    transform's raw_shapes); flat first, no shape twice."""
    flat = (math.prod(shapes[-1]),)
    unique: dict[tuple[int, ...], None] = dict.fromkeys([flat, *(tuple(s) for s in shapes)])
    return tuple(unique)


def to_features(
    rows: Any,
    shapes: Sequence[tuple[int, ...]],
    max_rows: int,
    minimum: float = -math.inf,
    maximum: float = math.inf,
) -> np.ndarray:
    """`rows` as float64 values shaped (len(rows), *shapes[0]).

    Each row is either flat (its values in order) or nested as one of `shapes` (the input
    transform's raw_shapes), e.g. an 8x8 grey image as 64 numbers or as [[[...8 numbers], ...]].
    Each value is a finite JSON number (not a boolean) from `minimum` to `maximum`.
    """
    input_shape = tuple(shapes[-1])
    if not isinstance(rows, list):
        raise InvalidInput(f"`inputs` should be a list of inputs, got {_kind(rows)}.")
    if not rows:
        raise InvalidInput("`inputs` is empty: send at least one row.")
    if len(rows) > max_rows:
        raise InvalidInput(
            f"`inputs` has {len(rows)} rows; this server takes at most {max_rows} per request. "
            f"Split the batch into several requests.",
            status_code=413,
        )
    accepted = accepted_shapes(shapes)
    values: list[float] = []
    for index, row in enumerate(rows):
        depth = _depth(row)
        # Nestings differ in depth or in a length, so at most one fits. A row that fits none
        # is described against the first of its depth (else the flat one, or the model's).
        candidates = [shape for shape in accepted if len(shape) == depth]
        candidates = candidates or [accepted[0] if depth <= 1 else input_shape]
        first_error: InvalidInput | None = None
        for shape in candidates:
            found: list[float] = []
            try:
                _collect(row, shape, f"inputs[{index}]", found, input_shape, (minimum, maximum))
            except InvalidInput as error:
                first_error = first_error or error
                continue
            values += found
            break
        else:
            raise first_error
    return np.asarray(values, dtype=np.float64).reshape(len(rows), *shapes[0])


def _depth(node: Any) -> int:
    """How deep the first elements of a nested list go (1 for a flat list)."""
    depth = 0
    while isinstance(node, list) and node:
        node, depth = node[0], depth + 1
    return depth


def _kind(value: Any) -> str:
    """A JSON value's kind, for messages."""
    if isinstance(value, list):
        return f"a list of {len(value)}"
    names = {dict: "an object", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def parse_json(body: bytes) -> Any:
    """The JSON value of a request body: UTF-8 text holding one JSON value (RFC 8259).

    400 for a body that is not that (not UTF-8, not JSON, NaN or Infinity, which Python's json
    module would accept); 422 for JSON that no request can be (a number too long to read, or
    nesting too deep to parse).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInput(
            f"the body is not UTF-8 text ({error.reason} at byte {error.start}): send JSON, "
            f"e.g. {EXAMPLE_BODY} (an image file goes to POST /predict/image)",
            status_code=400,
        ) from None
    try:
        return json.loads(text, parse_constant=_not_json)
    except InvalidInput:  # NaN or Infinity
        raise
    except json.JSONDecodeError as error:
        raise InvalidInput(f"the body is not valid JSON: {error}", status_code=400) from None
    except ValueError:  # Python reads integers of at most 4300 digits
        raise InvalidInput(
            "the body holds a number with more digits than any input takes"
        ) from None
    except RecursionError:
        raise InvalidInput("the body is nested more deeply than any request") from None


def _not_json(constant: str) -> None:
    raise InvalidInput(
        f"the body is not valid JSON: {constant} is not a JSON number (send finite numbers)",
        status_code=400,
    )


@dataclass(frozen=True)
class InputSpec:
    """What the `inputs` of one POST /predict request may hold, for one served model."""

    kind: str  # the input transform's: table, image, tensor
    shapes: tuple[tuple[int, ...], ...]  # its raw_shapes; accepted_shapes() adds the flat one
    minimum: float
    maximum: float
    max_rows: int

    @classmethod
    def of(cls, transform: Any, max_rows: int) -> "InputSpec":
        """The spec of a model's input transform (data/preprocessing.py, data/images.py)."""
        minimum, maximum = value_range(transform)
        shapes = tuple(tuple(int(size) for size in shape) for shape in transform.raw_shapes)
        return cls(transform.kind, shapes, minimum, maximum, int(max_rows))

    @property
    def accepted(self) -> tuple[tuple[int, ...], ...]:
        return accepted_shapes(self.shapes)

    def check(self, payload: Any) -> np.ndarray:
        """A request body's inputs as float64 values shaped (N, *shapes[0]), or InvalidInput."""
        if not isinstance(payload, dict):
            raise InvalidInput(
                f"the body should be a JSON object {EXAMPLE_BODY}, got {_kind(payload)}."
            )
        unknown = sorted(set(payload) - {"inputs"})
        if unknown:
            raise InvalidInput(
                f"the body has unknown field(s) {', '.join(map(repr, unknown))}; it takes "
                f"`inputs` only."
            )
        if "inputs" not in payload:
            raise InvalidInput(f"the body has no `inputs`: send {EXAMPLE_BODY}.")
        return to_features(
            payload["inputs"], self.shapes, self.max_rows, self.minimum, self.maximum
        )

    def describe(self) -> dict[str, Any]:
        """For GET /metadata: every accepted nesting, and the range of the numbers."""
        return {
            "accepted_shapes": [list(shape) for shape in self.accepted],
            "range": [_plain(self.minimum), _plain(self.maximum)],
        }

    def request_schema(self) -> dict[str, Any]:
        """The JSON Schema of a request body: what check() accepts, exactly."""
        low, high = _plain(self.minimum), _plain(self.maximum)
        number = {"type": "number", "minimum": low, "maximum": high}
        nestings = [
            {
                "title": f"{' x '.join(map(str, shape))} numbers",
                "description": "flat, in order" if index == 0 else f"nested as {list(shape)}",
                **_nested(shape, number),
            }
            for index, shape in enumerate(self.accepted)
        ]
        one_input = nestings[0] if len(nestings) == 1 else {"oneOf": nestings}
        others = [str(list(shape)) for shape in self.accepted[1:]]
        nested = f" or nested as {' or '.join(others)}" if others else ""
        schema: dict[str, Any] = {
            "title": "PredictRequest",
            "type": "object",
            "properties": {
                "inputs": {
                    "title": "Inputs",
                    "description": f"1 to {self.max_rows} {self.kind} inputs, each its "
                    f"{math.prod(self.shapes[-1])} numbers flat{nested}; numbers from "
                    f"{low:g} to {high:g}.",
                    "type": "array",
                    "minItems": 1,
                    "maxItems": self.max_rows,
                    "items": one_input,
                }
            },
            "required": ["inputs"],
            "additionalProperties": False,
        }
        size = math.prod(self.shapes[-1])
        if size <= _MAX_EXAMPLE_SIZE:
            value = 0 if low <= 0 <= high else low
            schema["examples"] = [{"inputs": [[value] * size]}]
        return schema


def value_range(transform: Any) -> tuple[float, float]:
    """The numbers one input may hold: pixels 0..255 for images; for other inputs, those that
    stay within float32 once preprocessed (standardised table features: the tightest such
    range over the features)."""
    if transform.kind == "image":
        return 0.0, 255.0
    mean, std = getattr(transform, "mean", None), getattr(transform, "std", None)
    if mean is None or std is None:
        return -FLOAT32_MAX, FLOAT32_MAX
    low = max(m - s * _STANDARDISED_MAX for m, s in zip(mean, std, strict=True))
    high = min(m + s * _STANDARDISED_MAX for m, s in zip(mean, std, strict=True))
    return float(low), float(high)


def _plain(value: float) -> float | int:
    """Whole numbers as int, so a schema says 255 rather than 255.0."""
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)


def _nested(shape: tuple[int, ...], leaf: dict[str, Any]) -> dict[str, Any]:
    schema = leaf
    for size in reversed(shape):
        schema = {"type": "array", "minItems": size, "maxItems": size, "items": schema}
    return schema


async def read_limited(request: Any, max_bytes: int) -> bytes:
    """A request's body, refused (413) as soon as it grows past `max_bytes`, before it is all
    in memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise InvalidInput(
            f"the body has {declared} bytes; at most {max_bytes} bytes are taken", 413
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise InvalidInput(
                f"the body has more than {max_bytes} bytes; at most {max_bytes} bytes are taken",
                413,
            )
        chunks.append(chunk)
    return b"".join(chunks)


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
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> None:
    """Append the numbers of `node` to `values`, checking it is a list nested as `shape`."""
    if not isinstance(node, list) or len(node) != shape[0]:
        raise InvalidInput(
            f"{where} should be a list of {shape[0]}, got {_kind(node)}. Each row is "
            f"{math.prod(input_shape)} numbers, flat or nested as {list(input_shape)}."
        )
    if len(shape) > 1:
        for index, child in enumerate(node):
            _collect(child, shape[1:], f"{where}[{index}]", values, input_shape, bounds)
        return
    minimum, maximum = bounds
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
        if not minimum <= value <= maximum:  # exact, for integers too
            raise InvalidInput(
                f"{where}[{index}] is {reprlib.repr(value)}, outside the range this model takes: "
                f"{_plain(minimum):g} to {_plain(maximum):g}."
            )
        values.append(number)
