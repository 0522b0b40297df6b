"""The HTTP API: a Ray Serve deployment with a FastAPI ingress around one trained checkpoint.

`build_app` is the application builder that `serve run`, the written serve_config.yaml and
KubeRay RayService manifests name: `<package>.serving.app:build_app`.
"""

import asyncio
from typing import Any

import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.serve import Application

from .. import __version__
from ..checkpoints import load
from .ingress import replica_env
from .inputs import InvalidInput, check_finite, to_features


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


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"inputs": [[0.0] * 64, [0.5] * 64]}]},
    )

    inputs: list[list[Any]] = Field(
        description="A batch of rows. Each row is one input: its numbers flat, or nested as the "
        "model's input shape (see GET /metadata)."
    )


class PredictResponse(BaseModel):
    predictions: list[int] = Field(description="the most likely class of each row")
    probabilities: list[list[float]] = Field(description="each row's probability for each class")


class Metadata(BaseModel):
    model: str
    architecture: dict[str, Any]
    checkpoint: str
    input_shape: list[int]
    feature_columns: list[str] = Field(description="the order of the numbers in a flat row")
    classes: list[int]
    device: str
    max_rows_per_request: int
    max_batch_size: int


class Health(BaseModel):
    status: str
    requests: int = Field(description="predict requests this replica has answered")
    forward_passes: int = Field(description="batches it ran; fewer than requests when batching")


api = FastAPI(
    title="Classifier",
    version=__version__,
    description="Predictions of a trained classifier. Send a batch of rows to POST /predict.",
)


@serve.deployment
@serve.ingress(api)
class ModelServer:
    """One replica: the model in memory, requests merged into batches by `@serve.batch`."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.settings = AppArgs.model_validate(args)
        if self.settings.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("serve asks for a GPU per replica, but torch sees no CUDA device.")
        # Torch would start a thread per core of the node, competing with everything else there.
        torch.set_num_threads(max(1, int(self.settings.resources_per_replica.get("CPU", 1))))
        self.model = load(self.settings.checkpoint_path, device=self.settings.device)
        self.requests = 0
        self.forward_passes = 0
        self._forward.set_max_batch_size(self.settings.max_batch_size)
        self._forward.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)

    @api.get("/health")
    def health(self) -> Health:
        return Health(status="ok", requests=self.requests, forward_passes=self.forward_passes)

    @api.get("/metadata")
    def metadata(self) -> Metadata:
        return Metadata(
            model=self.model.model_name,
            architecture=self.model.model_config,
            checkpoint=self.model.path,
            input_shape=list(self.model.input_shape),
            feature_columns=list(self.model.transform.feature_columns),
            classes=list(range(self.model.num_classes)),
            device=self.settings.device,
            max_rows_per_request=self.settings.max_rows_per_request,
            max_batch_size=self.settings.max_batch_size,
        )

    @api.post(
        "/predict",
        responses={
            413: {"description": "more rows than max_rows_per_request"},
            422: {"description": "not a batch of finite numbers of the model's input shape"},
        },
    )
    async def predict(self, request: PredictRequest) -> PredictResponse:
        # Checked and preprocessed here, per request: a bad request must fail alone, not the
        # batch it would join.
        try:
            features = to_features(
                request.inputs, self.model.input_shape, self.settings.max_rows_per_request
            )
            batch = self.model.transform(features)  # the training-time preprocessing
            check_finite(batch)
        except InvalidInput as error:
            raise HTTPException(status_code=error.status_code, detail=str(error)) from None
        probabilities = await self._forward(torch.from_numpy(batch))
        self.requests += 1
        return PredictResponse(
            predictions=probabilities.argmax(dim=1).tolist(),
            probabilities=probabilities.tolist(),
        )

    # Sizes here are placeholders: __init__ sets the configured ones.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _forward(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        """Class probabilities for several requests' rows in one forward pass."""
        merged = torch.cat(batches)
        # In a thread, so that the event loop keeps accepting requests for the next batch.
        probabilities = await asyncio.to_thread(self.model.probabilities, merged)
        self.forward_passes += 1
        return list(probabilities.split([len(batch) for batch in batches]))


def build_app(args: dict[str, Any]) -> Application:
    """The Serve application for `args` (see AppArgs); replica settings come from them too."""
    settings = AppArgs.model_validate(args)
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
    deployment = ModelServer.options(
        ray_actor_options=actor_options,
        max_ongoing_requests=settings.max_ongoing_requests,
        logging_config={"enable_access_log": settings.access_log},
        **scale,
    )
    return deployment.bind(settings.model_dump())
