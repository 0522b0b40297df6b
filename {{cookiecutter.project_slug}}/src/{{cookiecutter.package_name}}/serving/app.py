"""The HTTP API: a Ray Serve deployment with a FastAPI ingress around one trained checkpoint.

`build_app` is the application builder that `serve run`, the written serve_config.yaml and
KubeRay RayService manifests name: `<package>.serving.app:build_app`. It reads the checkpoint
once to build the API of that model (`make_api`): its OpenAPI schema (/openapi.json, /docs)
states what one input is (nesting, lengths, range of the numbers), how many a request may hold,
what an answer holds for its task, and every status code with its reason. The replicas enforce
exactly that schema: a request valid by it is answered, except for reasons no schema can state
(listed with the 422: a network overflowing float32 on values far outside its training data).
"""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.serve import Application

from .. import __version__
from ..checkpoints import LoadedModel, load
from ..data.images import UPLOAD_FORMATS, ImageError, ImageTooLargeError, decode_image
from ..tasks import Classification, Regression, Task
from .ingress import replica_env
from .inputs import InputSpec, InvalidInput, check_finite, parse_json, read_limited

# What each route's body may be sent as. A request without Content-Type is taken as these too.
JSON_TYPE = "application/json"
IMAGE_TYPES = ("image/png", "image/jpeg", "application/octet-stream")


class AppArgs(BaseModel):
    """The builder's `args` (serve_config.yaml), filled from the `serve` config group."""

    model_config = ConfigDict(extra="forbid")

    checkpoint_path: str = Field(
        description="a .ckpt file, a Ray checkpoint folder (either may be s3://, gs://) or a run "
        "folder; replicas must be able to read it"
    )
    num_replicas: int | None = Field(1, ge=1)
    autoscaling: dict[str, Any] | None = None
    resources_per_replica: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0})
    max_ongoing_requests: int = Field(64, ge=1)
    max_batch_size: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(0.0, ge=0)
    max_rows_per_request: int = Field(1024, ge=1)
    max_request_bytes: int = Field(16 * 2**20, ge=1)
    max_image_bytes: int = Field(10 * 2**20, ge=1)
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    access_log: bool = False
    haproxy: bool = Field(False, description="the controller runs HAProxy (see ingress.py)")

    @model_validator(mode="after")
    def _one_way_to_scale(self) -> "AppArgs":
        if (self.num_replicas is None) == (self.autoscaling is None):
            raise ValueError("set exactly one of num_replicas and autoscaling")
        return self

    @property
    def device(self) -> str:
        return "cuda" if self.resources_per_replica.get("GPU", 0) > 0 else "cpu"


class Metadata(BaseModel):
    model: str
    architecture: dict[str, Any]
    checkpoint: str
    task: dict[str, Any] = Field(description="what the model predicts (classes, target)")
    inputs: dict[str, Any] = Field(
        description="what one input is: kind, shape, dtype, every accepted nesting "
        "(accepted_shapes) and the range of its numbers"
    )
    input_shape: list[int] = Field(description="the shape the model itself takes")
    device: str
    max_rows_per_request: int
    max_request_bytes: int = Field(description="POST /predict: the largest body taken")
    max_batch_size: int
    max_image_bytes: int | None = Field(None, description="image models: POST /predict/image")
    max_image_pixels: int | None = Field(None, description="image models: POST /predict/image")


class Health(BaseModel):
    status: str
    requests: int = Field(description="predict requests this replica has answered")
    forward_passes: int = Field(description="batches it ran; fewer than requests when batching")


# ---- The contract: the schemas of one checkpoint's API ------------------------------------------

ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "properties": {"detail": {"type": "string", "description": "what is wrong, and what to send"}},
    "required": ["detail"],
}


def response_schema(task: Task, max_rows: int) -> dict[str, Any]:
    """The JSON Schema of a prediction: one value per input under `predictions`, and for
    classification the class probabilities. A task of your own (tasks/base.py Task.predict)
    may add more per-input values under their own names."""
    per_input = {"type": "array", "minItems": 1, "maxItems": max_rows}
    in_order = "one per input, in the order sent"
    if type(task) is Classification:
        classes = task.num_outputs
        properties: dict[str, Any] = {
            "predictions": {
                **per_input,
                "description": f"the most likely class, {in_order}",
                "items": {"type": "integer", "minimum": 0, "maximum": classes - 1},
            },
            "probabilities": {
                **per_input,
                "description": f"the probability of each class (in class order), {in_order}",
                "items": {
                    "type": "array",
                    "minItems": classes,
                    "maxItems": classes,
                    "items": {"type": "number", "minimum": 0, "maximum": 1},
                },
            },
        }
    elif type(task) is Regression:
        target = task.target_name or "target"
        properties = {
            "predictions": {
                **per_input,
                "description": f"the predicted {target}, {in_order}",
                "items": {"type": "number"},
            }
        }
    else:  # a task of your own: its `prediction`, and whatever else it returns
        properties = {
            "predictions": {
                **per_input,
                "description": f"the {task.name or 'task'}'s prediction, {in_order}",
                "items": {},
            }
        }
    closed = type(task) in (Classification, Regression)
    return {
        "title": "PredictResponse",
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False
        if closed
        else {"type": "array", "description": f"more values from the task, {in_order}"},
    }


@dataclass(frozen=True)
class Contract:
    """What the API of one checkpoint promises: built with the app, checked by each replica
    against the checkpoint it loads."""

    inputs: InputSpec
    task: dict[str, Any]  # Task.describe()
    response: dict[str, Any]  # the JSON Schema of an answer

    @classmethod
    def of(cls, model: LoadedModel, max_rows: int) -> "Contract":
        return cls(
            inputs=InputSpec.of(model.transform, max_rows),
            task=model.task.describe(),
            response=response_schema(model.task, max_rows),
        )


# ---- The API ------------------------------------------------------------------------------------

# Answers that come from Serve or from a failure in the replica rather than from the routes.
SERVE_RESPONSES: dict[int | str, dict[str, Any]] = {
    500: {
        "description": "an unexpected error in the replica (its log has the traceback)",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    503: {
        "description": "Serve has no replica ready to take the request (one is starting or "
        "restarting); retry later",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {JSON_TYPE: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _answer() -> dict[str, Any]:
    return {
        "description": "the predictions",
        "content": {JSON_TYPE: {"schema": {"$ref": "#/components/schemas/PredictResponse"}}},
    }


class ModelAPI(FastAPI):
    """FastAPI, with the model's request and answer schemas among the OpenAPI components."""

    def __init__(self, schemas: dict[str, dict[str, Any]], **kwargs: Any) -> None:
        self.model_schemas = schemas
        super().__init__(**kwargs)

    def openapi(self) -> dict[str, Any]:
        schema = super().openapi()
        schema.setdefault("components", {}).setdefault("schemas", {}).update(self.model_schemas)
        return schema


def make_api(contract: Contract, server_of: Callable[[], "ModelServer"]) -> FastAPI:
    """The HTTP API of one model. Its routes call `server_of()`'s ModelServer: in a Serve
    replica the replica's own (build_app); any ModelServer elsewhere (the tests)."""
    spec = contract.inputs
    takes_images = spec.kind == "image"
    api = ModelAPI(
        schemas={
            "PredictRequest": spec.request_schema(),
            "PredictResponse": contract.response,
            "Error": ERROR_SCHEMA,
        },
        title="Model",
        version=__version__,
        description=f"Predictions of a trained model ({contract.task.get('task', 'task')} of "
        f"{spec.kind} inputs). Send a batch of inputs to POST /predict"
        + (", or an image file to POST /predict/image." if takes_images else ".")
        + " This schema is the served model's own: what an input is, what an answer holds, "
        "and each route's status codes. Every request valid by it is answered.",
    )

    @api.get("/health", responses=SERVE_RESPONSES)
    async def health() -> Health:
        return server_of().health()

    @api.get("/metadata", response_model_exclude_none=True, responses=SERVE_RESPONSES)
    async def metadata() -> Metadata:
        return server_of().metadata()

    @api.post(
        "/predict",
        summary="Predict a batch of inputs",
        response_class=JSONResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {JSON_TYPE: {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
            }
        },
        responses={
            200: _answer(),
            400: _error(
                "the body is not JSON: not UTF-8 text, malformed, or holding NaN or Infinity"
            ),
            413: _error(
                f"more inputs than max_rows_per_request ({spec.max_rows}), or a body larger than "
                "max_request_bytes (GET /metadata), refused before it is read whole"
            ),
            415: _error(f"a Content-Type other than {JSON_TYPE}"),
            422: _error(
                "JSON that is not a valid request: not as the PredictRequest schema says (the "
                "detail says where); or, valid as it is, inputs whose values overflow float32 in "
                "the model (once preprocessed, or in its forward pass), which only values far "
                "outside the training data do"
            ),
            **SERVE_RESPONSES,
        },
    )
    async def predict(request: Request) -> JSONResponse:
        """Inputs as the request schema says (GET /metadata's `inputs` describes them too),
        preprocessed as in training. The answer has one prediction per input."""
        try:
            _check_media_type(request, (JSON_TYPE,), "POST /predict takes JSON")
            server = server_of()
            # Read up to the limit only: a body is parsed whole, so one of gigabytes would
            # exhaust the replica's memory before the row count could be checked.
            body = await read_limited(request, server.settings.max_request_bytes)
            return JSONResponse(await server.predict(parse_json(body)))
        except InvalidInput as error:
            raise HTTPException(status_code=error.status_code, detail=str(error)) from None

    formats = " or ".join(UPLOAD_FORMATS)
    if takes_images:
        upload = {"type": "string", "format": "binary"}
        image_body = {
            "required": True,
            "description": f"one {formats} file, at most max_image_bytes bytes and "
            f"max_image_pixels pixels; resized and converted as in training",
            "content": {media: {"schema": upload} for media in IMAGE_TYPES},
        }
        image_responses = {
            200: _answer(),
            413: _error(
                "the file is larger than max_image_bytes, or the image has more than "
                "max_image_pixels pixels"
            ),
            415: _error(f"a Content-Type other than {', '.join(IMAGE_TYPES)}"),
            422: _error(f"not a {formats} image, or a damaged one"),
        }
    else:  # the route exists for every model; for this one, no request is valid
        image_body = {
            "required": True,
            "description": f"nothing: this model takes {spec.kind} inputs, not images",
            "content": {"*/*": {"schema": {"not": {}}}},
        }
        image_responses = {415: _error(f"always: this model takes {spec.kind} inputs")}

    @api.post(
        "/predict/image",
        summary="Predict one image file" if takes_images else "Not for this model",
        response_class=JSONResponse,
        status_code=200 if takes_images else 415,
        openapi_extra={"requestBody": image_body},
        responses={**image_responses, **SERVE_RESPONSES},
    )
    async def predict_image(request: Request) -> JSONResponse:
        """One image file as the request body (`curl --data-binary @cat.png -H 'Content-Type:
        image/png'`), resized and normalised as in training. Only for image models."""
        server = server_of()
        try:
            if not takes_images:
                raise InvalidInput(
                    f"this model takes {spec.kind} inputs, not images: POST /predict", 415
                )
            _check_media_type(request, IMAGE_TYPES, f"POST /predict/image takes a {formats} file")
            body = await read_limited(request, server.settings.max_image_bytes)
            return JSONResponse(await server.predict_image(body))
        except InvalidInput as error:
            raise HTTPException(status_code=error.status_code, detail=str(error)) from None

    return api


def _check_media_type(request: Request, accepted: tuple[str, ...], what: str) -> None:
    """415 unless the request's Content-Type is one of `accepted` (or it has none)."""
    value = request.headers.get("content-type", "")
    media = value.split(";")[0].strip().lower()
    if not media or media in accepted:
        return
    if JSON_TYPE in accepted and media.startswith("application/") and media.endswith("+json"):
        return
    hint = " (image files go to POST /predict/image)" if media.startswith("image/") else ""
    raise InvalidInput(
        f"{what}, sent as Content-Type {', '.join(accepted)}; got {value}{hint}", 415
    )


# ---- The replica --------------------------------------------------------------------------------


class ModelServer:
    """One replica: the model in memory, requests merged into batches by `@serve.batch`.

    build_app serves it with the API of its checkpoint (make_api); its methods do what the
    routes ask once the HTTP layer has read the request.
    """

    def __init__(self, args: dict[str, Any], contract: Contract | None = None) -> None:
        self.settings = AppArgs.model_validate(args)
        if self.settings.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("serve asks for a GPU per replica, but torch sees no CUDA device.")
        # Torch would start a thread per core of the node, competing with everything else there.
        torch.set_num_threads(max(1, int(self.settings.resources_per_replica.get("CPU", 1))))
        self.model = load(self.settings.checkpoint_path, device=self.settings.device)
        own = Contract.of(self.model, self.settings.max_rows_per_request)
        if contract is not None and contract != own:
            raise RuntimeError(
                f"{self.model.path} no longer holds the model this app was built for (its inputs "
                f"or task differ): deploy the app again to serve it."
            )
        self.contract = own
        self.requests = 0
        self.forward_passes = 0
        self._configure_batching()

    def _configure_batching(self) -> None:
        self._forward.set_max_batch_size(self.settings.max_batch_size)
        self._forward.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)

    def health(self) -> Health:
        return Health(status="ok", requests=self.requests, forward_passes=self.forward_passes)

    def metadata(self) -> Metadata:
        takes_images = self.model.transform.kind == "image"
        return Metadata(
            model=self.model.model_name,
            architecture=self.model.model_config,
            checkpoint=self.model.path,
            task=self.model.task.describe(),
            inputs={**self.model.transform.describe(), **self.contract.inputs.describe()},
            input_shape=list(self.model.input_shape),
            device=self.settings.device,
            max_rows_per_request=self.settings.max_rows_per_request,
            max_request_bytes=self.settings.max_request_bytes,
            max_batch_size=self.settings.max_batch_size,
            max_image_bytes=self.settings.max_image_bytes if takes_images else None,
            max_image_pixels=self.settings.max_image_pixels if takes_images else None,
        )

    async def predict(self, payload: Any) -> dict[str, Any]:
        """The answer to a parsed POST /predict body, or InvalidInput."""
        # Checked and preprocessed here, per request: a bad request must fail alone, not the
        # batch it would join.
        raw = self.contract.inputs.check(payload)
        try:
            batch = self.model.transform(raw)  # the training-time preprocessing
        except ValueError as error:  # the transform refused the values
            raise InvalidInput(str(error)) from None
        check_finite(batch)
        return await self._answer(batch)

    async def predict_image(self, body: bytes) -> dict[str, Any]:
        """The answer to an uploaded image file, or InvalidInput."""
        transform = self.model.transform
        try:
            image = decode_image(body, transform, max_pixels=self.settings.max_image_pixels)
        except ImageError as error:  # not an image, a damaged one, or too many pixels
            status = 413 if isinstance(error, ImageTooLargeError) else 422
            raise InvalidInput(str(error), status) from None
        batch = transform(image[None])
        check_finite(batch)
        return await self._answer(batch)

    async def _answer(self, batch: np.ndarray) -> dict[str, Any]:
        predicted = await self._forward(torch.from_numpy(batch))
        self.requests += 1
        for values in predicted.values():
            if values.is_floating_point() and len(values):
                bad = ~torch.isfinite(values.reshape(len(values), -1)).all(dim=1)
                if bad.any():
                    raise InvalidInput(
                        f"inputs[{int(bad.nonzero()[0, 0])}]: the model's outputs overflow "
                        f"float32 for it; send values in the range the model was trained on."
                    )
        answer = {name: values.tolist() for name, values in predicted.items()}
        return {"predictions": answer.pop("prediction"), **answer}

    # Sizes here are placeholders: __init__ sets the configured ones.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _forward(self, batches: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """The task's predictions for several requests' inputs in one forward pass."""
        merged = torch.cat(batches)
        # In a thread, so that the event loop keeps accepting requests for the next batch.
        predicted = await asyncio.to_thread(self.model.predict, merged)
        self.forward_passes += 1
        sizes = [len(batch) for batch in batches]
        parts = {name: values.split(sizes) for name, values in predicted.items()}
        return [{name: parts[name][index] for name in parts} for index in range(len(sizes))]


def this_replica() -> ModelServer:
    """The ModelServer of the Serve replica handling the request."""
    return serve.get_replica_context().servable_object


def build_app(args: dict[str, Any]) -> Application:
    """The Serve application for `args` (see AppArgs); replica settings come from them too.

    The checkpoint is read here once, for its API's schemas; the replicas serve that same file
    (a run folder is resolved to its best checkpoint now) and check it still fits the schemas.
    """
    settings = AppArgs.model_validate(args)
    return application(settings, load(settings.checkpoint_path))


def application(settings: AppArgs, model: LoadedModel) -> Application:
    """The Serve application of `model`, loaded from `settings.checkpoint_path` (build_app; or
    `serve=local`, which has read it already)."""
    contract = Contract.of(model, settings.max_rows_per_request)
    settings = settings.model_copy(update={"checkpoint_path": model.path})
    server = serve.ingress(make_api(contract, this_replica))(ModelServer)
    resources = dict(settings.resources_per_replica)
    actor_options: dict[str, Any] = {
        "num_cpus": resources.pop("CPU", 1.0),
        "num_gpus": resources.pop("GPU", 0.0),
    }
    if resources:
        actor_options["resources"] = resources
    actor_options["runtime_env"] = {"env_vars": replica_env(settings.haproxy)}
    scale = (
        {"autoscaling_config": settings.autoscaling}
        if settings.autoscaling
        else {"num_replicas": settings.num_replicas}
    )
    deployment = serve.deployment(name="ModelServer")(server).options(
        ray_actor_options=actor_options,
        max_ongoing_requests=settings.max_ongoing_requests,
        logging_config={"enable_access_log": settings.access_log},
        **scale,
    )
    return deployment.bind(settings.model_dump(), contract)
