"""The baseline a Ray Serve user would build without mosaserve: one full model per task, multiplexed.

Each task is a whole adapted ViT (a copy of the backbone with the task's adapter and head, moved to
mosaserve's device and dtype), loaded from the same store by `@serve.multiplexed` (LRU over
`max_models` per replica; Serve routes a request to a replica holding its model by the
`serve_multiplexed_model_id` header). Batching uses the same settings as mosaserve's replicas,
but Serve splits each batch by model id, so rows of different tasks never share a forward pass. Used by the side-by-side load test only.
"""
# No `from __future__ import annotations`: FastAPI must see the route parameters' real types.

import asyncio
import copy

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from ray import serve
from ray.serve import Application

from ..adapters.backbone import load_backbone
from ..adapters.file_format import load_adapter
from ..adapters.images import BadImageError, decode_image
from ..adapters.loading import build_adapted_model
from ..adapters.preprocess import Preprocessor
from ..runtime.device import parse_device, serving_dtype
from ..runtime.store import open_store
from ..deploy.config import ServeConfig

app = FastAPI(title="per-task models (baseline)")


def per_task_models_app(config: ServeConfig, max_models: int) -> Application:
    """`max_models` per replica; -1 keeps every task's model (memory grows with the task count)."""
    device, dtype = parse_device(config.runtime.device), serving_dtype(config.runtime.dtype)

    @serve.deployment(name="PerTaskModels", num_replicas=config.serving.replicas, max_ongoing_requests=config.serving.max_ongoing_requests,
                      ray_actor_options={"num_cpus": config.serving.replica_num_cpus, "num_gpus": config.replica_num_gpus})
    @serve.ingress(app)
    class PerTaskModels:
        def __init__(self) -> None:
            if config.serving.torch_threads:
                torch.set_num_threads(config.serving.torch_threads)
            self.backbone, self.info = load_backbone(config.runtime.backbone)
            self.preprocess = Preprocessor(self.info)
            self.store = open_store(config.runtime.store_dir, config.runtime.store_cache_dir)
            self.registry = CollectorRegistry()
            ProcessCollector(registry=self.registry)  # its memory, to set beside mosaserve's
            self.classify.set_max_batch_size(config.serving.max_batch_size)
            self.classify.set_batch_wait_timeout_s(config.serving.batch_wait_timeout_s)

        @serve.multiplexed(max_num_models_per_replica=max_models)
        async def model_of(self, task_id: str):
            entry = self.store.entries().get(task_id)
            if entry is None:
                raise KeyError(task_id)
            adapter = load_adapter(self.store.path_of(entry), self.info.fingerprint)
            # Built on the host from the float32 backbone (the adapter's fingerprint is of those weights), then
            # moved: the load a user of this design pays on every miss.
            model = build_adapted_model(copy.deepcopy(self.backbone), self.info, adapter).eval()
            return model.to(device, dtype), adapter.header.labels

        @app.post("/v1/tasks/{task_id}/predict")
        async def predict(self, task_id: str, request: Request) -> dict:
            if serve.get_multiplexed_model_id() != task_id:
                raise HTTPException(400, "send the task id in the serve_multiplexed_model_id header too")
            try:
                image = decode_image(await request.body(), config.limits.max_image_pixels)
            except BadImageError as exc:
                raise HTTPException(400, str(exc)) from exc
            try:
                label, probability = await self.classify(image)
            except KeyError as exc:
                raise HTTPException(404, f"task {task_id!r} is not registered") from exc
            return {"task_id": task_id, "predictions": [{"top_k": [{"label": label, "probability": probability}]}]}

        @app.get("/metrics")
        async def metrics(self) -> Response:
            return Response(generate_latest(self.registry), media_type="text/plain")

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def classify(self, images: list[torch.Tensor]) -> list[tuple[str, float]]:
            # Serve hands this a batch of ONE model id (it splits mixed batches by id).
            model, labels = await self.model_of(serve.get_multiplexed_model_id())
            return await asyncio.to_thread(self._forward, model, labels, images)

        def _forward(self, model, labels, images: list[torch.Tensor]) -> list[tuple[str, float]]:
            with torch.inference_mode():
                batch = torch.cat([self.preprocess(image) for image in images])  # sizes may differ before resizing
                probs = torch.softmax(model(batch.to(device, dtype)).float(), dim=-1)
            best, index = probs.max(dim=-1)
            return [(labels[i], round(p, 6)) for p, i in zip(best.tolist(), index.tolist())]

    return PerTaskModels.bind()
