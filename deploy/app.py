"""The Ray Serve application: ingress -> replicas (mixed-task batches), the task board, the training sidecar.

`build_app(args)` is the import path of `deploy/serve_config.yaml`; `args` are `ServeConfig` fields.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ray.serve import Application
from ray.serve.config import BackpressureConfig

from ..runtime.errors import ServiceBusyError
from ..runtime.store import is_object_store
from .board import TaskBoard
from .config import ServeConfig
from .http.ingress import Ingress
from .process import actor_options
from .replica import TaskReplica
from .training.sidecar import TrainingSidecar


def build_app(args: dict[str, Any] | ServeConfig | None = None) -> Application:
    config = args if isinstance(args, ServeConfig) else ServeConfig.from_dict(args)
    config = _absolute_paths(config)  # replicas may run in another working directory
    board = TaskBoard.options(name="TaskBoard", ray_actor_options=actor_options(num_cpus=0)).bind(config)
    replicas = TaskReplica.options(
        name="TaskReplica",
        num_replicas=config.serving.replicas,
        max_ongoing_requests=config.serving.max_ongoing_requests,
        max_queued_requests=config.serving.max_queued_requests,
        ray_actor_options=actor_options(
            num_cpus=config.serving.replica_num_cpus, num_gpus=config.replica_num_gpus),
    ).bind(config, board)
    trainer = TrainingSidecar.options(name="TrainingSidecar",
                                      ray_actor_options=actor_options(num_cpus=config.training.trainer_num_cpus)
                                      ).bind(config, board)
    # The ingress refuses what would miss its deadline at a small cost, before decoding; past this bound Serve's
    # proxy refuses for it. Requests that arrive together are routed one at a time, and Serve counts those
    # being routed as queued: a small queue bound would refuse some of them with the ingress idle.
    in_progress = config.serving.ingress_requests_per_replica * config.serving.replicas
    return Ingress.options(name="Ingress", max_ongoing_requests=in_progress, max_queued_requests=in_progress,
                           backpressure_config=BackpressureConfig(retry_after_s=ServiceBusyError.retry_after_s),
                           ray_actor_options=actor_options(num_cpus=0)).bind(config, replicas, board, trainer)


def _absolute_paths(config: ServeConfig) -> ServeConfig:
    spec = config.runtime.backbone
    if spec.checkpoint is not None:
        spec = replace(spec, checkpoint=str(Path(spec.checkpoint).resolve()))
    datasets = str(Path(config.training.datasets_root).resolve()) if config.training.datasets_root else None
    store, cache = config.runtime.store_dir, config.runtime.store_cache_dir
    return config.with_settings(backbone=spec, store_dir=store if is_object_store(store) else str(Path(store).resolve()),
                                store_cache_dir=cache and str(Path(cache).resolve()), datasets_root=datasets,
                                jobs_dir=str(config.resolved_jobs_dir()))
