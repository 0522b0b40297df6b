"""The HTTP API's contract: /openapi.json states exactly what the server accepts and answers.

In-process, without Ray: each model's API (`make_api`) around its ModelServer, through FastAPI's
TestClient, for a table classifier, a regression model and an image classifier. Requests valid
by the served schema are generated from it (hypothesis-jsonschema) and must all be answered;
invalid ones must be refused with a status code the schema lists for the route, with a message.
The last test serves a model on Ray Serve and checks the same over real HTTP.
"""

import functools
import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from jsonschema import Draft202012Validator
from PIL import Image
from ray import serve
from torch import nn

from {{ cookiecutter.package_name }} import models
from {{ cookiecutter.package_name }}.checkpoints import PROJECT_KEY, project_state
from {{ cookiecutter.package_name }}.data import Transform
from {{ cookiecutter.package_name }}.data.images import ImageTransform
from {{ cookiecutter.package_name }}.serving.app import ModelServer, build_app, make_api
from {{ cookiecutter.package_name }}.tasks import Classification, Regression, Task

MAX_ROWS = 4
EXAMPLES = settings(
    max_examples=50,
    deadline=None,
    database=None,  # nothing written into the project folder
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
COLUMNS = tuple(f"pixel_{i}" for i in range(64))
MODELS: dict[str, tuple[Any, Task, str, dict[str, Any]]] = {
    # name: input transform, task, network, its settings
    "table classifier": (
        Transform(COLUMNS, (1, 8, 8), mean=(0.25,) * 64, std=(0.5,) * 64),
        Classification(10),
        "MLP",
        {"hidden_dim": 8, "num_layers": 1, "dropout": 0.0},
    ),
    "regression": (
        Transform(
            tuple(f"x{i}" for i in range(10)),
            (10,),
            mean=tuple(10.0 * i for i in range(10)),
            std=tuple(1.0 + i for i in range(10)),
        ),
        Regression(target_mean=150.0, target_std=77.0, target_name="progression"),
        "MLP",
        {"hidden_dim": 8, "num_layers": 2, "dropout": 0.0},
    ),
    "image classifier": (
        ImageTransform(height=8, width=8, channels=1, mean=(0.3,), std=(0.2,)),
        Classification(10),
        "CNN",
        {"channels": 4, "num_blocks": 1, "dropout": 0.0, "pooled_size": 1},
    ),
}


def save_checkpoint(path: Path, name: str, first_weights: float | None = None) -> Path:
    """A checkpoint in the layout training writes: the network's weights under `net.` (as in
    TaskModule) and the project state. `first_weights` fills the first layer's weights."""
    transform, task, network, options = MODELS[name]
    model_class = getattr(models, network)
    sizes = models.size_arguments(model_class, transform.input_shape, task.num_outputs)
    net = model_class(**options, **sizes)
    if first_weights is not None:
        first = next(m for m in net.modules() if isinstance(m, nn.Linear | nn.Conv2d))
        with torch.no_grad():
            first.weight.fill_(first_weights)
    config = {"_target_": f"{models.__name__}.{network}", **options}
    inputs = {**transform.state(), "label_column": "label"}
    state = project_state(
        config, "network", transform.input_shape, task.num_outputs, task.state(), inputs
    )
    weights = {f"net.{key}": value for key, value in net.state_dict().items()}
    torch.save({"state_dict": weights, PROJECT_KEY: state}, path)
    return path


class LocalServer(ModelServer):
    """A replica without Serve: `@serve.batch` needs a running replica, so each request gets a
    forward pass of its own here (test_serving.py batches for real)."""

    def _configure_batching(self) -> None:
        pass

    async def _forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        self.forward_passes += 1
        return self.model.predict(batch)


class Served:
    """One model's API in-process, and its schema as GET /openapi.json serves it."""

    def __init__(self, checkpoint: Path, **limits: int) -> None:
        self.args = {"checkpoint_path": str(checkpoint), "max_rows_per_request": MAX_ROWS, **limits}
        self.server = LocalServer(self.args)
        self.client = TestClient(make_api(self.server.contract, lambda: self.server))
        self.openapi = self.client.get("/openapi.json").json()
        schemas = self.openapi["components"]["schemas"]
        self.request_schema = schemas["PredictRequest"]
        self.response_schema = schemas["PredictResponse"]
        self.valid_request = Draft202012Validator(self.request_schema)
        self.valid_answer = Draft202012Validator(self.response_schema)

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response, after checking its status code is one the schema lists for the route,
        and that an error says what is wrong."""
        response = self.client.request(method, path, **kwargs)
        listed = self.openapi["paths"][path][method.lower()]["responses"]
        assert str(response.status_code) in listed, (path, response.status_code, response.text)
        if response.status_code == 200 and path.startswith("/predict"):
            self.valid_answer.validate(response.json())
        elif response.status_code >= 400:
            assert response.headers["content-type"] == "application/json", response.text
            assert response.json()["detail"], response.text
        return response

    def predict(self, body: Any) -> httpx.Response:
        return self.send("POST", "/predict", json=body)

    @property
    def example(self) -> dict[str, Any]:
        """A valid request: one input of ones, flat."""
        first = self.request_schema["properties"]["inputs"]["items"]
        size = first.get("oneOf", [first])[0]["minItems"]
        return {"inputs": [[1] * size]}

    def still_serves(self) -> None:
        assert self.predict(self.example).status_code == 200


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    # First layers scaled down so that no value in the schema's range overflows float32 in the
    # network: every valid request is then answered. The image model's pixels are bounded anyway.
    tame = {"table classifier": 1e-36, "regression": 1e-36, "image classifier": None}
    return {
        name: save_checkpoint(folder / f"{name}.ckpt", name, first_weights=weights)
        for name, weights in tame.items()
    }


@pytest.fixture(scope="module")
def apis(checkpoints: dict[str, Path]) -> dict[str, Served]:
    limits = {"max_image_bytes": 4000, "max_image_pixels": 32 * 32}
    return {name: Served(file, **limits) for name, file in checkpoints.items()}


@pytest.fixture(scope="module", params=list(MODELS))
def api(request: pytest.FixtureRequest, apis: dict[str, Served]) -> Served:
    return apis[request.param]


# ---- The schema states each model's types, shapes and limits ----------------------------------


def nestings(api: Served) -> list[dict[str, Any]]:
    items = api.request_schema["properties"]["inputs"]["items"]
    return items.get("oneOf", [items])


def shape_of(schema: dict[str, Any]) -> list[int]:
    shape = []
    while schema.get("type") == "array":
        assert schema["minItems"] == schema["maxItems"]  # exact lengths
        shape.append(schema["minItems"])
        schema = schema["items"]
    assert schema["type"] == "number"  # JSON numbers: not strings, not booleans
    return shape


def test_request_schema_states_shapes_and_ranges(apis: dict[str, Served]) -> None:
    expected = {
        "table classifier": [[64], [1, 8, 8]],
        "regression": [[10]],
        "image classifier": [[64], [8, 8, 1], [8, 8]],
    }
    for name, api in apis.items():
        inputs = api.request_schema["properties"]["inputs"]
        assert (inputs["minItems"], inputs["maxItems"]) == (1, MAX_ROWS)
        assert api.request_schema["required"] == ["inputs"]
        assert api.request_schema["additionalProperties"] is False
        assert [shape_of(nesting) for nesting in nestings(api)] == expected[name], name
        metadata = api.send("GET", "/metadata").json()
        assert metadata["inputs"]["accepted_shapes"] == expected[name]
        for nesting in nestings(api):
            leaf = nesting
            while leaf["type"] == "array":
                leaf = leaf["items"]
            assert [leaf["minimum"], leaf["maximum"]] == metadata["inputs"]["range"]
    assert apis["image classifier"].send("GET", "/metadata").json()["inputs"]["range"] == [0, 255]
    # A standardised feature stays within float32: the tightest range over the features.
    low, high = apis["regression"].send("GET", "/metadata").json()["inputs"]["range"]
    assert -3.5e38 < low < -3.3e38 and 3.3e38 < high < 3.5e38


def test_response_schema_is_typed_per_task(apis: dict[str, Served]) -> None:
    for name in ("table classifier", "image classifier"):
        answer = apis[name].response_schema
        assert answer["required"] == ["predictions", "probabilities"]
        assert answer["additionalProperties"] is False
        classes = answer["properties"]["predictions"]["items"]
        assert classes == {"type": "integer", "minimum": 0, "maximum": 9}
        each = answer["properties"]["probabilities"]["items"]
        assert (each["minItems"], each["maxItems"]) == (10, 10)
        assert each["items"] == {"type": "number", "minimum": 0, "maximum": 1}
    answer = apis["regression"].response_schema
    assert answer["required"] == ["predictions"] and "probabilities" not in answer["properties"]
    assert answer["properties"]["predictions"]["items"] == {"type": "number"}
    assert "progression" in answer["properties"]["predictions"]["description"]
    for api in apis.values():
        predictions = api.response_schema["properties"]["predictions"]
        assert (predictions["minItems"], predictions["maxItems"]) == (1, MAX_ROWS)


def test_metadata_describes_each_task_and_its_inputs(apis: dict[str, Served]) -> None:
    table = apis["table classifier"].send("GET", "/metadata").json()
    assert table["task"] == {"task": "classification", "classes": list(range(10))}
    assert table["inputs"]["kind"] == "table" and table["inputs"]["shape"] == [64]
    assert table["inputs"]["dtype"] == "number"
    assert table["inputs"]["feature_columns"] == list(COLUMNS)
    assert table["input_shape"] == [1, 8, 8] and table["max_rows_per_request"] == MAX_ROWS
    assert "max_image_bytes" not in table
    regression = apis["regression"].send("GET", "/metadata").json()
    assert regression["task"] == {"task": "regression", "target": "progression"}
    assert regression["inputs"]["shape"] == [10]
    image = apis["image classifier"].send("GET", "/metadata").json()
    assert image["inputs"]["kind"] == "image" and image["inputs"]["shape"] == [8, 8, 1]
    assert image["inputs"]["dtype"] == "uint8" and image["model"] == "CNN"
    assert image["max_image_bytes"] == 4000 and image["max_image_pixels"] == 1024


def test_every_route_lists_its_errors_with_a_schema(apis: dict[str, Served]) -> None:
    for name, api in apis.items():
        paths = api.openapi["paths"]
        predict = paths["/predict"]["post"]
        body = predict["requestBody"]
        assert body["required"] is True and list(body["content"]) == ["application/json"]
        assert {"200", "400", "413", "415", "422", "500", "503"} == set(predict["responses"])
        image = paths["/predict/image"]["post"]
        if name == "image classifier":
            content = image["requestBody"]["content"]
            assert set(content) == {"image/png", "image/jpeg", "application/octet-stream"}
            assert {"200", "413", "415", "422"} <= set(image["responses"])
        else:  # no request is valid: the route answers 415 only
            assert image["requestBody"]["content"] == {"*/*": {"schema": {"not": {}}}}
            assert "200" not in image["responses"] and "415" in image["responses"]
        for path in ("/health", "/metadata"):
            assert "200" in paths[path]["get"]["responses"]
        for route in (predict, image):
            for code, response in route["responses"].items():
                assert response["description"], (name, code)


# ---- Every request valid by the schema is answered --------------------------------------------


@functools.cache
def valid_requests(api: Served) -> st.SearchStrategy[dict[str, Any]]:
    """Requests valid by the served schema. The body is an object of `inputs` alone (checked
    above), so only `inputs` is drawn from the schema: hypothesis-jsonschema's strategy for
    objects relies on hypothesis internals that newer hypothesis releases changed."""
    return from_schema(api.request_schema["properties"]["inputs"]).map(
        lambda inputs: {"inputs": inputs}
    )


@EXAMPLES
@given(data=st.data())
def test_requests_generated_from_the_schema_are_answered(api: Served, data: st.DataObject) -> None:
    body = data.draw(valid_requests(api))
    response = api.predict(body)
    assert response.status_code == 200, (body, response.text)
    assert len(response.json()["predictions"]) == len(body["inputs"])


LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.just([]),
    st.just({}),
    st.just([0.5]),
)


def list_paths(node: Any, path: tuple[int, ...] = ()) -> Iterator[tuple[int, ...]]:
    """The path of every list in `inputs`, itself included."""
    if isinstance(node, list):
        yield path
        for index, child in enumerate(node):
            yield from list_paths(child, (*path, index))


@EXAMPLES
@given(data=st.data())
def test_a_request_is_answered_exactly_when_the_schema_says_it_is_valid(
    api: Served, data: st.DataObject
) -> None:
    body = data.draw(valid_requests(api))
    # One change to a valid request: most make it invalid, some leave it valid.
    change = data.draw(st.sampled_from(["replace", "drop", "repeat", "field", "body"]))
    if change == "field":
        body[data.draw(st.sampled_from(["input", "rows", "extra"]))] = data.draw(LEAVES)
    elif change == "body":
        body = data.draw(st.one_of(LEAVES, st.just(body["inputs"]), st.just({})))
    else:
        path = data.draw(st.sampled_from(list(list_paths(body["inputs"]))))
        target = body["inputs"]
        for index in path:
            target = target[index]
        if change == "replace":
            target[data.draw(st.integers(0, len(target) - 1))] = data.draw(LEAVES)
        elif change == "drop":
            target.pop()
        else:
            target.append(target[-1])
    response = api.predict(body)
    if api.valid_request.is_valid(body):
        assert response.status_code == 200, (body, response.text)
    else:
        assert 400 <= response.status_code < 500, (body, response.text)


# ---- Invalid requests are refused with a listed code and a message ----------------------------

ROW = [0.5] * 64
JSON_HEADERS = {"content-type": "application/json"}
INVALID = {
    "a row of an empty object": {"inputs": [[{}]]},
    "an empty batch": {"inputs": []},
    "too many rows": {"inputs": [ROW] * (MAX_ROWS + 1)},
    "a short row": {"inputs": [ROW[:-1]]},
    "a long row": {"inputs": [[*ROW, 0.5]]},
    "a string": {"inputs": [[*ROW[:-1], "0.5"]]},
    "a boolean": {"inputs": [[True, *ROW[1:]]]},
    "null": {"inputs": [[None] * 64]},
    "a ragged image": {"inputs": [[[[0.5]] * 8] * 7 + [[[0.5]] * 7]]},
    "inputs not rows": {"inputs": [1, 2, 3]},
    "no inputs": {"rows": [ROW]},
    "an extra field": {"inputs": [ROW], "model": "other"},
    "a list for a body": [ROW],
    "inputs a string": {"inputs": "0.5, 0.5"},
}


@pytest.mark.parametrize("case", list(INVALID))
def test_schema_invalid_requests_are_refused(apis: dict[str, Served], case: str) -> None:
    body = INVALID[case]
    api = apis["image classifier"]  # 64 numbers flat, or nested 8x8x1 or 8x8
    assert not api.valid_request.is_valid(body)
    response = api.predict(body)
    expected = 413 if case == "too many rows" else 422
    assert response.status_code == expected, response.text
    api.still_serves()


@pytest.mark.parametrize(
    "body,status",
    [
        (b'{"inputs": [[0.1, 0.2', 400),
        (b"inputs=1,2,3", 400),
        (b"", 400),
        (b'{"inputs": [[NaN' + b", 0.5" * 63 + b"]]}", 400),
        (b'{"inputs": [[-Infinity' + b", 0.5" * 63 + b"]]}", 400),
        (b'{"inputs": [[1e999' + b", 0.5" * 63 + b"]]}", 422),  # JSON, but out of range
        (b'{"inputs": [[' + b"9" * 5000 + b", 0.5" * 63 + b"]]}", 422),
        (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 422),
        (b'{"inputs": [[255.5' + b", 0.5" * 63 + b"]]}", 422),  # a pixel above 255
        (b'{"inputs": [[-1' + b", 0.5" * 63 + b"]]}", 422),
    ],
    ids=[
        "malformed",
        "form data",
        "empty",
        "NaN",
        "Infinity",
        "beyond float64",
        "a 5000-digit number",
        "nested deeply",
        "a pixel above 255",
        "a negative pixel",
    ],
)
def test_bodies_that_are_not_valid_json_requests_are_refused(
    apis: dict[str, Served], body: bytes, status: int
) -> None:
    api = apis["image classifier"]
    response = api.send("POST", "/predict", content=body, headers=JSON_HEADERS)
    assert response.status_code == status, response.text
    api.still_serves()


def test_a_body_that_is_not_utf8_gets_400_with_a_json_detail(api: Served) -> None:
    for body in (b"\xff\xfe\x00{", '{"inputs": [[0.5]]}'.encode("utf-16")):
        response = api.send("POST", "/predict", content=body, headers=JSON_HEADERS)
        assert response.status_code == 400
        assert "not UTF-8" in response.json()["detail"]
    api.still_serves()


def test_out_of_range_values_are_refused_and_the_range_is_inclusive(api: Served) -> None:
    nesting = nestings(api)[0]
    low, high = nesting["items"]["minimum"], nesting["items"]["maximum"]
    size = nesting["minItems"]
    assert api.predict({"inputs": [[low] * size, [high] * size]}).status_code == 200
    for value in (high * 1.01 if high > 0 else high + 1, low * 1.01 if low < 0 else low - 1):
        response = api.predict({"inputs": [[value] * size]})
        assert response.status_code == 422 and "outside the range" in response.json()["detail"]


def test_other_content_types_get_415(api: Served) -> None:
    body = json.dumps(api.example).encode()
    for media in ("text/plain", "application/x-www-form-urlencoded", "image/png"):
        response = api.send("POST", "/predict", content=body, headers={"content-type": media})
        assert response.status_code == 415 and "application/json" in response.json()["detail"]
    # JSON with parameters, a +json type, or no Content-Type at all: taken as JSON.
    for media in ("application/json; charset=utf-8", "application/vnd.api+json", None):
        headers = {"content-type": media} if media else {}
        assert api.send("POST", "/predict", content=body, headers=headers).status_code == 200


def test_values_that_overflow_the_network_get_the_listed_422(tmp_path: Path) -> None:
    # Valid by the schema, yet no answer can be written: the reason the schema lists with 422.
    api = Served(save_checkpoint(tmp_path / "wild.ckpt", "table classifier", first_weights=1.0))
    body = {"inputs": [ROW, [1e38] * 64]}
    assert api.valid_request.is_valid(body)
    response = api.predict(body)
    assert response.status_code == 422
    assert "inputs[1]" in response.json()["detail"] and "overflow" in response.json()["detail"]
    assert (
        "overflow float32"
        in api.openapi["paths"]["/predict"]["post"]["responses"]["422"]["description"]
    )
    api.still_serves()


# ---- Image files ------------------------------------------------------------------------------


def image_file(pixels: np.ndarray, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind)
    return buffer.getvalue()


def test_image_uploads_are_answered_or_refused_with_a_listed_code(apis: dict[str, Served]) -> None:
    api = apis["image classifier"]
    grey = (np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)
    png = image_file(grey)
    answer = api.send("POST", "/predict/image", content=png, headers={"content-type": "image/png"})
    assert answer.status_code == 200
    # The same pixels as numbers give the same answer.
    assert api.predict({"inputs": [grey.tolist()]}).json() == answer.json()
    colour = np.zeros((16, 16, 3), dtype=np.uint8)  # resized and converted as in training
    for content, media in [
        (png, None),
        (png, "application/octet-stream"),
        (image_file(colour, "JPEG"), "image/jpeg"),
    ]:
        headers = {"content-type": media} if media else {}
        response = api.send("POST", "/predict/image", content=content, headers=headers)
        assert response.status_code == 200, response.text
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8).tobytes()
    refused = {
        "corrupt": (png[:40], "image/png", 422),
        "not an image": (b"label,pixel\n1,2\n", None, 422),
        "too many pixels": (image_file(np.zeros((40, 40), dtype=np.uint8)), "image/png", 413),
        "too many bytes": (noise, "image/png", 413),
        "a text body": (png, "text/plain", 415),
        "JSON": (b'{"inputs": [[0.5]]}', "application/json", 415),
    }
    for name, (content, media, status) in refused.items():
        headers = {"content-type": media} if media else {}
        response = api.send("POST", "/predict/image", content=content, headers=headers)
        assert response.status_code == status, (name, response.text)
        api.still_serves()
    # An image where a row is expected.
    response = api.send("POST", "/predict", content=png, headers={"content-type": "image/png"})
    assert response.status_code == 415 and "/predict/image" in response.json()["detail"]
    assert api.send("POST", "/predict", content=png).status_code == 400  # not UTF-8


@pytest.mark.parametrize("name", ["table classifier", "regression"])
def test_image_route_of_a_model_without_images_answers_415(
    apis: dict[str, Served], name: str
) -> None:
    api = apis[name]
    png = image_file(np.zeros((8, 8), dtype=np.uint8))
    response = api.send(
        "POST", "/predict/image", content=png, headers={"content-type": "image/png"}
    )
    assert response.status_code == 415 and "POST /predict" in response.json()["detail"]
    api.still_serves()


# ---- The app Serve runs -----------------------------------------------------------------------


def test_a_replica_refuses_a_checkpoint_that_no_longer_fits_its_schema(
    checkpoints: dict[str, Path], apis: dict[str, Served]
) -> None:
    regression = apis["regression"].server.contract
    with pytest.raises(RuntimeError, match="no longer holds the model"):
        LocalServer(apis["table classifier"].args, regression)
    LocalServer(apis["regression"].args, regression)  # the one it was built for


def test_build_app_deploys_the_resolved_checkpoint_with_its_contract(
    checkpoints: dict[str, Path], apis: dict[str, Served]
) -> None:
    folder = checkpoints["regression"].parent / "checkpoint_1"
    folder.mkdir(exist_ok=True)
    (folder / "checkpoint.ckpt").write_bytes(checkpoints["regression"].read_bytes())
    deployment = build_app({"checkpoint_path": str(folder), "max_rows_per_request": MAX_ROWS})
    args, contract = deployment._bound_deployment.init_args
    assert args["checkpoint_path"] == str((folder / "checkpoint.ckpt").resolve())
    assert contract == apis["regression"].server.contract
    assert deployment._bound_deployment.name == "ModelServer"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_serve_serves_the_same_contract(
    ray_address: str, checkpoints: dict[str, Path], apis: dict[str, Served]
) -> None:
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        args = {"checkpoint_path": str(checkpoints["image classifier"]), "max_rows_per_request": 4}
        serve.run(build_app(args), name="api_contract", route_prefix="/contract")
        url = f"http://127.0.0.1:{port}/contract"
        served = httpx.get(f"{url}/openapi.json", timeout=30).json()
        local = apis["image classifier"].openapi
        assert served["paths"] == local["paths"]
        assert served["components"] == local["components"]
        row = {"inputs": [[[7] * 8] * 8]}
        assert httpx.post(f"{url}/predict", json=row, timeout=30).status_code == 200
        bad = httpx.post(f"{url}/predict", json={"inputs": [[{}]]}, timeout=30)
        assert bad.status_code == 422 and bad.json()["detail"]
        binary = httpx.post(f"{url}/predict", content=b"\xff\xfe", headers=JSON_HEADERS, timeout=30)
        assert binary.status_code == 400 and binary.json()["detail"]
        metadata = httpx.get(f"{url}/metadata", timeout=30).json()
        assert metadata["inputs"]["accepted_shapes"] == [[64], [8, 8, 1], [8, 8]]
    finally:
        serve.shutdown()
