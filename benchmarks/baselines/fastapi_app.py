"""Baseline: the same checkpoint behind a plain FastAPI app on uvicorn, no Ray Serve.

Same request and response as the project's POST /predict ({"inputs": [[...], ...]} in,
predictions and probabilities out), the same checkpoint loader and training-time preprocessing,
one torch thread (as one Serve replica with 1 CPU). One request, one forward pass: no batching.
"""

import argparse
import importlib
import os
import sys
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class PredictRequest(BaseModel):
    inputs: list[list[Any]]


class PredictResponse(BaseModel):
    predictions: list[int]
    probabilities: list[list[float]]


def build(package: str, checkpoint: str) -> FastAPI:
    loader = importlib.import_module(f"{package}.checkpoints")
    model = loader.load(loader.resolve(checkpoint))
    model.net.eval()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(request: PredictRequest) -> PredictResponse:
        inputs = torch.from_numpy(model.transform(request.inputs))
        with torch.inference_mode():
            probabilities = torch.softmax(model.net(inputs), dim=1)
        return PredictResponse(
            predictions=probabilities.argmax(dim=1).tolist(),
            probabilities=probabilities.tolist(),
        )

    return app


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__)
    arguments.add_argument("--project", default=".")
    arguments.add_argument("--package", required=True)
    arguments.add_argument("--checkpoint", required=True, help="a run folder, checkpoint or .ckpt")
    arguments.add_argument("--port", type=int, default=8100)
    args = arguments.parse_args()
    sys.path.insert(0, os.path.abspath(os.path.join(args.project, "src")))
    torch.set_num_threads(1)
    app = build(args.package, args.checkpoint)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
