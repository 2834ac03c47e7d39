"""The served application's settings: one dataclass, read from the `args` of a Ray Serve config file.

`deploy/serve_config.yaml` is a plain Ray Serve config (so `serve run` and `serve deploy` take it);
its application's `args` become a `ServeConfig`. Unknown keys are refused, so a typo never passes
silently.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from ..adapters.backbone import BackboneSpec
from ..adapters.embedded import EMBEDDED_BACKBONE, EMBEDDED_CHECKPOINT
from ..adapters.file_format import DEFAULT_MAX_BYTES
from ..adapters.images import DEFAULT_MAX_PIXELS
from ..runtime.device import parse_device
from ..runtime.task_runtime import RuntimeConfig

ADMIN_TOKEN_ENV = "MOSASERVE_ADMIN_TOKEN"
MAX_TOP_K = 1000  # labels one prediction may list


class ServeConfigError(ValueError):
    """The application's configuration is invalid."""


@dataclass(frozen=True)
class ServeConfig:
    backbone: BackboneSpec = EMBEDDED_BACKBONE
    store_dir: str = "out/store"
    # Training jobs' records and checkpoints; None: beside the store, `<store_dir>-jobs`. Never inside
    # the store, whose folder holds published adapters only.
    jobs_dir: str | None = None
    replicas: int = 1
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.005
    max_ongoing_requests: int = 128  # Serve's default of 5 would keep batches tiny
    replica_num_cpus: float = 1.0
    torch_threads: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    max_resident: int = 1024
    max_host: int | None = None  # adapters kept in host memory; None: all (the rest re-read from the store)
    strategy: str = "auto"
    admin_token: str | None = None  # or the MOSASERVE_ADMIN_TOKEN environment variable
    # The task board's own port for PUT / DELETE /v1/tasks/{id} (admin_api.py): uploads sent there skip
    # the processes that serve predictions. None: off (the main port takes them either way); 0: any free
    # port (GET /healthz names it).
    admin_port: int | None = None
    admin_host: str = "127.0.0.1"
    max_request_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_images_per_request: int = 64
    # Pixels of all the images of one request together, read from their headers before any is decoded:
    # each image may hold max_image_pixels, and 64 of them would otherwise decode to 4.8 GB in the ingress.
    max_request_pixels: int = 2 * DEFAULT_MAX_PIXELS
    # Decoded pixels the ingress holds for all requests in flight together (deploy/in_flight.py); beyond it
    # a request is answered 503 with Retry-After at once. 200M: 600 MB of uint8, about 4,000 224 x 224 images.
    max_pixels_in_flight: int = 8 * DEFAULT_MAX_PIXELS
    max_adapter_bytes: int = DEFAULT_MAX_BYTES
    default_top_k: int = 5
    datasets_root: str | None = None  # where POST /v1/train may read folder:/list: datasets; None: built-ins only
    trainer_num_cpus: float = 0.0  # the training sidecar's CPUs (raise it, or give it a GPU node, to isolate it)
    # A replica's heartbeat to the task board when nothing changes (liveness: one that stops beating for
    # 5 of them, at least 5 s, is forgotten). News of a change reaches replicas at once either way.
    heartbeat_s: float = 1.0
    # The least time between two store re-reads of a replica: an isolated change reaches it at once, a
    # burst of them in few passes (each pass costs the replica a Serve call and a manifest read, on the
    # cores that serve), which delays a registration in a burst by up to this long. 0: one pass each.
    sync_coalesce_s: float = 0.25
    # How many nice levels (0-19) the task board, the process that validates and publishes uploads,
    # drops below the other Ray workers (Ray starts them at 15; 19 is the floor): a burst of uploads
    # yields the cores to serving.
    board_nice: int = 10
    registration_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        positive = ("replicas", "max_batch_size", "max_ongoing_requests", "max_resident", "max_request_bytes",
                    "max_image_pixels", "max_images_per_request", "max_request_pixels", "max_adapter_bytes",
                    "max_pixels_in_flight",
                    "default_top_k", "heartbeat_s", "registration_timeout_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ServeConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.max_pixels_in_flight < self.max_request_pixels:
            raise ServeConfigError(f"max_pixels_in_flight ({self.max_pixels_in_flight}) must be at least "
                                   f"max_request_pixels ({self.max_request_pixels}), or no such request could pass")
        if self.default_top_k > MAX_TOP_K:
            raise ServeConfigError(f"default_top_k must be at most {MAX_TOP_K}, got {self.default_top_k}")
        if self.admin_token is not None:
            _check_admin_token(self.admin_token, "admin_token")
        if not (isinstance(self.board_nice, int) and 0 <= self.board_nice <= 19):
            raise ServeConfigError(f"board_nice must be an integer from 0 to 19, got {self.board_nice!r}")
        self._check_admin_address()
        if self.max_host is not None and self.max_host <= 0:
            raise ServeConfigError(f"max_host must be positive or null, got {self.max_host!r}")
        if min(self.batch_wait_timeout_s, self.replica_num_cpus, self.trainer_num_cpus, self.sync_coalesce_s) < 0:
            raise ServeConfigError("batch_wait_timeout_s, replica_num_cpus, trainer_num_cpus and sync_coalesce_s must "
                                   "not be negative")
        self._check_jobs_dir()
        try:
            self.runtime_config()  # device, dtype and strategy, checked where the runtime defines them
        except ValueError as exc:
            raise ServeConfigError(str(exc)) from exc

    def _check_admin_address(self) -> None:
        port = self.admin_port
        if port is not None and not (isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 65535):
            raise ServeConfigError(f"admin_port must be a port number (0 for any free one) or null, got {port!r}")
        if not (isinstance(self.admin_host, str) and self.admin_host.strip()):
            raise ServeConfigError(f"admin_host must be a host name or address, got {self.admin_host!r}")

    def _check_jobs_dir(self) -> None:
        if self.jobs_dir is not None and not self.jobs_dir.strip():
            raise ServeConfigError("jobs_dir must be a folder path or null")
        jobs, store = self.resolved_jobs_dir(), Path(self.store_dir).resolve()
        if jobs == store or jobs.is_relative_to(store) or store.is_relative_to(jobs):
            raise ServeConfigError(f"jobs_dir {str(jobs)!r} and store_dir {str(store)!r} must not contain each other")

    def resolved_jobs_dir(self) -> Path:
        if self.jobs_dir is not None:
            return Path(self.jobs_dir).resolve()
        store = Path(self.store_dir).resolve()
        if not store.name:
            raise ServeConfigError("store_dir is the filesystem root: set jobs_dir explicitly")
        return store.with_name(f"{store.name}-jobs")

    def runtime_config(self) -> RuntimeConfig:
        return RuntimeConfig(backbone=self.backbone, store_dir=str(Path(self.store_dir).resolve()),
                             device=self.device, dtype=self.dtype, max_resident=self.max_resident, max_host=self.max_host,
                             strategy=self.strategy, max_adapter_bytes=self.max_adapter_bytes)

    @property
    def replica_num_gpus(self) -> int:
        """Ray gives each serving replica on "cuda" one GPU of its own, which it sees as "cuda"."""
        return 1 if parse_device(self.device).type == "cuda" else 0

    def resolved_admin_token(self) -> str | None:
        if self.admin_token is not None:
            return self.admin_token
        token = os.environ.get(ADMIN_TOKEN_ENV) or None
        return None if token is None else _check_admin_token(token, ADMIN_TOKEN_ENV)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ServeConfig":
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ServeConfigError(f"unknown mosaserve settings: {unknown}; known: {sorted(known)}")
        if "backbone" in data:
            data["backbone"] = _backbone_from(data["backbone"])
        for name in ("store_dir", "jobs_dir", "datasets_root"):
            if data.get(name) is not None:
                data[name] = str(data[name])
        try:
            return cls(**data)
        except TypeError as exc:
            raise ServeConfigError(f"invalid mosaserve settings: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_admin_token(token: Any, where: str) -> str:
    """The token as an Authorization header carries it: a YAML number, or a character outside ASCII, would
    fail or lock out every admin request rather than fail here."""
    if not (isinstance(token, str) and token and token.isascii() and token == token.strip()):
        raise ServeConfigError(f"{where} must be a non-empty string of ASCII characters without surrounding spaces; "
                               f"got a {type(token).__name__}")
    return token


def _backbone_from(raw: Any) -> BackboneSpec:
    """A mapping of BackboneSpec fields; `checkpoint: embedded` names the checkpoint shipped in the package."""
    if raw == "embedded":
        return EMBEDDED_BACKBONE
    if not isinstance(raw, dict) or not set(raw) <= {"name", "kwargs", "checkpoint", "seed"}:
        raise ServeConfigError(f"backbone must be 'embedded' or a mapping with name, kwargs, checkpoint, seed; got {raw!r}")
    checkpoint = raw.get("checkpoint")
    return BackboneSpec(str(raw.get("name", BackboneSpec.name)), dict(raw.get("kwargs") or {}),
                        str(EMBEDDED_CHECKPOINT) if checkpoint == "embedded" else checkpoint, int(raw.get("seed", 0)))


@dataclass(frozen=True)
class ServeFile:
    """What `mosaserve serve --config` takes from a Ray Serve config file."""

    settings: ServeConfig
    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/"


def read_serve_file(path: str | os.PathLike) -> ServeFile:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ServeConfigError(f"cannot read serve config {path}: {exc}") from exc
    apps = (doc or {}).get("applications") or []
    if len(apps) != 1:
        raise ServeConfigError(f"{path} must describe exactly one application, found {len(apps)}")
    http = doc.get("http_options") or {}
    return ServeFile(ServeConfig.from_dict(apps[0].get("args")), str(http.get("host", "127.0.0.1")),
                     int(http.get("port", 8000)), str(apps[0].get("route_prefix", "/")))
