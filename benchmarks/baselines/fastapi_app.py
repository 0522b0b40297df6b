"""Baseline: the same checkpoint behind a plain FastAPI app on uvicorn, no Ray Serve.

Same request and response as the project's POST /predict ({"inputs": [[...], ...]} in,
predictions and probabilities out), the same checkpoint loader, training-time preprocessing and
prediction (`LoadedModel.predict`), one torch thread (as one Serve replica with 1 CPU), one
process. Three ways to answer, by --mode:

- `sync`: a plain `def` handler (FastAPI runs it in its thread pool), one forward pass per
  request: what a first FastAPI app looks like;
- `async`: an `async def` handler, the forward pass on the event loop, one per request;
- `batched`: an `async def` handler that merges requests into one forward pass the way the
  project's Serve replica does (serving/app.py): each request is checked and preprocessed on its
  own, then queued; one batch at a time takes what is queued, up to --max-batch-size requests,
  after waiting up to --batch-wait-timeout-s for more (serve.max_batch_size and
  serve.batch_wait_timeout_s of the project's config), and runs in a thread so that the event
  loop keeps accepting requests meanwhile.
"""

import argparse
import asyncio
import importlib
import os
import sys
import time
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

MODES = ("sync", "async", "batched")


class PredictRequest(BaseModel):
    inputs: list[list[Any]]


class PredictResponse(BaseModel):
    predictions: list[int]
    probabilities: list[list[float]]


class Batcher:
    """Requests' inputs merged into one forward pass, one batch at a time (like `@serve.batch`
    with `max_concurrent_batches=1`)."""

    def __init__(self, predict: Any, max_batch_size: int, wait_timeout_s: float) -> None:
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.wait_timeout_s = wait_timeout_s
        self.queue: asyncio.Queue | None = None

    async def __call__(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.queue is None:  # created on the server's event loop
            self.queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._loop())
        answer = asyncio.get_running_loop().create_future()
        await self.queue.put((inputs, answer))
        return await answer

    async def _loop(self) -> None:
        while True:
            batch = [await self.queue.get()]
            deadline = time.monotonic() + self.wait_timeout_s
            while len(batch) < self.max_batch_size:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            try:
                merged = torch.cat([inputs for inputs, _ in batch])
                predicted = await asyncio.to_thread(self.predict, merged)
                sizes = [len(inputs) for inputs, _ in batch]
                parts = {name: values.split(sizes) for name, values in predicted.items()}
                for index, (_, answer) in enumerate(batch):
                    answer.set_result({name: parts[name][index] for name in parts})
            except Exception as error:  # every request of the batch fails with it
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(error)


def build(
    package: str,
    checkpoint: str,
    mode: str = "sync",
    max_batch_size: int = 32,
    batch_wait_timeout_s: float = 0.0,
) -> FastAPI:
    loader = importlib.import_module(f"{package}.checkpoints")
    model = loader.load(loader.resolve(checkpoint))
    app = FastAPI()

    def respond(predicted: dict[str, torch.Tensor]) -> PredictResponse:
        return PredictResponse(
            predictions=predicted["prediction"].tolist(),
            probabilities=predicted["probabilities"].tolist(),
        )

    def inputs_of(request: PredictRequest) -> torch.Tensor:
        return torch.from_numpy(model.transform(request.inputs))

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    if mode == "sync":

        @app.post("/predict")
        def predict(request: PredictRequest) -> PredictResponse:
            return respond(model.predict(inputs_of(request)))

    elif mode == "async":

        @app.post("/predict")
        async def predict_async(request: PredictRequest) -> PredictResponse:
            return respond(model.predict(inputs_of(request)))

    else:
        batcher = Batcher(model.predict, max_batch_size, batch_wait_timeout_s)

        @app.post("/predict")
        async def predict_batched(request: PredictRequest) -> PredictResponse:
            return respond(await batcher(inputs_of(request)))

    return app


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--project", default=".")
    arguments.add_argument("--package", required=True)
    arguments.add_argument("--checkpoint", required=True, help="a run folder, checkpoint or .ckpt")
    arguments.add_argument("--port", type=int, default=8100)
    arguments.add_argument("--mode", choices=MODES, default="sync")
    arguments.add_argument("--max-batch-size", type=int, default=32)
    arguments.add_argument("--batch-wait-timeout-s", type=float, default=0.0)
    args = arguments.parse_args()
    sys.path.insert(0, os.path.abspath(os.path.join(args.project, "src")))
    torch.set_num_threads(1)
    app = build(
        args.package, args.checkpoint, args.mode, args.max_batch_size, args.batch_wait_timeout_s
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
