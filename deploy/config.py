"""The served application's settings: the runtime's config and grouped settings, read from a Ray Serve config file.

`deploy/serve_config.yaml` is a plain Ray Serve config (so `serve run` and `serve deploy` take it);
its application's `args` become a `ServeConfig`, either as groups (`runtime:`, `serving:`, `limits:`,
`board:`, `training:`) or as the flat names of their fields. Unknown keys are refused, so a typo
never passes silently. Every field carries the help text of the README's config table.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from ..adapters.backbone import BackboneSpec
from ..adapters.embedded import EMBEDDED_BACKBONE, EMBEDDED_CHECKPOINT
from ..adapters.images import DEFAULT_MAX_PIXELS
from ..runtime.device import parse_device
from ..runtime.store import is_object_store
from ..runtime.task_runtime import RuntimeConfig, setting

ADMIN_TOKEN_ENV = "MOSASERVE_ADMIN_TOKEN"
MAX_TOP_K = 1000  # labels one prediction may list
OBJECT_STORE_JOBS_DIR = "out/jobs"  # training records stay on the sidecar's machine


class ServeConfigError(ValueError):
    """The application's configuration is invalid."""


def _positive(settings: Any, *names: str) -> None:
    for name in names:
        if getattr(settings, name) <= 0:
            raise ServeConfigError(f"{name} must be positive, got {getattr(settings, name)!r}")


@dataclass(frozen=True)
class ServingSettings:
    """How many replicas serve, how they batch, and what Ray reserves for them."""

    replicas: int = setting(1, "serving replicas, each holding the backbone and the adapters it serves")
    max_batch_size: int = setting(32, "rows of any tasks one batch holds")
    batch_wait_timeout_s: float = setting(0.005, "how long a batch waits for more rows once its first arrived")
    max_ongoing_requests: int = setting(128, "rows a replica takes at once (Serve's default of 5 keeps batches tiny)")
    replica_num_cpus: float = setting(1.0, "CPUs Ray reserves for each replica")
    torch_threads: int | None = setting(None, "torch threads per replica; null: torch's default")
    max_queued_requests: int = setting(64, "rows the ingress keeps waiting for a free replica slot; past it a "
                                           "request is answered 503 with Retry-After at once")
    # Little's law: what one replica answers within the objective is its rate times the objective.
    ingress_requests_per_replica: int = setting(64, "predictions the ingress handles at once per replica; as many "
                                                    "more wait at Serve's proxy, the rest are answered 503 there. "
                                                    "Raise it for fast replicas (a GPU): above requests per second "
                                                    "per replica times the latency objective")
    task_series: int = setting(100, "tasks whose requests get series of their own in /metrics: the busiest by "
                                    "recent traffic, re-ranked each minute; the others count under task=\"(other)\"")

    def __post_init__(self) -> None:
        _positive(self, "replicas", "max_batch_size", "max_ongoing_requests", "max_queued_requests",
                  "ingress_requests_per_replica", "task_series")
        if min(self.batch_wait_timeout_s, self.replica_num_cpus) < 0:
            raise ServeConfigError("batch_wait_timeout_s and replica_num_cpus must not be negative")


@dataclass(frozen=True)
class RequestLimits:
    """What one request, and all requests in flight together, may bring."""

    max_request_bytes: int = setting(16 * 1024 * 1024, "the largest request body")
    max_image_pixels: int = setting(DEFAULT_MAX_PIXELS, "the most pixels one image may declare")
    max_images_per_request: int = setting(64, "images in one prediction request")
    # Read from the images' headers before any is decoded: 64 images of max_image_pixels would decode to 4.8 GB.
    max_request_pixels: int = setting(2 * DEFAULT_MAX_PIXELS, "pixels of all the images of one request together")
    max_pixels_in_flight: int = setting(8 * DEFAULT_MAX_PIXELS, "decoded pixels the ingress holds for all requests "
                                                                "at once; past it a request is answered 503 at once")
    default_top_k: int = setting(5, "labels a prediction lists when the request does not say")
    request_timeout_s: float = setting(10.0, "a prediction's deadline; a client's X-Request-Timeout-Ms may shorten "
                                             "it. Rows past it are dropped unbatched and answered 504")
    max_bulk_upload_bytes: int = setting(256 * 1024 * 1024, "the largest body of POST /v1/tasks (a tar of adapter "
                                                            "files registered together)")

    def __post_init__(self) -> None:
        _positive(self, "max_request_bytes", "max_image_pixels", "max_images_per_request", "max_request_pixels",
                  "max_pixels_in_flight", "default_top_k", "request_timeout_s", "max_bulk_upload_bytes")
        if self.max_pixels_in_flight < self.max_request_pixels:
            raise ServeConfigError(f"max_pixels_in_flight ({self.max_pixels_in_flight}) must be at least "
                                   f"max_request_pixels ({self.max_request_pixels}), or no such request could pass")
        if self.default_top_k > MAX_TOP_K:
            raise ServeConfigError(f"default_top_k must be at most {MAX_TOP_K}, got {self.default_top_k}")


@dataclass(frozen=True)
class BoardSettings:
    """The task board: its admin port and token, and how changes reach the replicas."""

    admin_token: str | None = setting(None, f"the admin routes' bearer token; or set {ADMIN_TOKEN_ENV}")
    admin_port: int | None = setting(None, "the board's own port for PUT / DELETE /v1/tasks/{id}, off the serving "
                                           "path; null: off (the main port takes them either way); 0: any free port")
    admin_host: str = setting("127.0.0.1", "the admin port's address; 0.0.0.0 on a cluster")
    heartbeat_s: float = setting(1.0, "a replica's heartbeat when nothing changes; one silent for 5 of them "
                                      "(at least 5 s) is forgotten")
    # Each pass costs the replica a Serve call and a manifest read, on the cores that serve.
    sync_coalesce_s: float = setting(0.25, "the least time between two store re-reads of a replica: a burst of "
                                           "changes reaches it in few passes; 0: one pass per change")
    # Ray starts its workers at nice 15; 19 is the floor.
    board_nice: int = setting(10, "nice levels (0-19) the board drops below the other Ray workers, so a burst of "
                                  "uploads yields the cores to serving")
    registration_timeout_s: float = setting(30.0, "how long a change waits for every replica before answering 202")

    def __post_init__(self) -> None:
        _positive(self, "heartbeat_s", "registration_timeout_s")
        if self.sync_coalesce_s < 0:
            raise ServeConfigError("sync_coalesce_s must not be negative")
        if self.admin_token is not None:
            _check_admin_token(self.admin_token, "admin_token")
        if not (isinstance(self.board_nice, int) and 0 <= self.board_nice <= 19):
            raise ServeConfigError(f"board_nice must be an integer from 0 to 19, got {self.board_nice!r}")
        port = self.admin_port
        if port is not None and not (isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 65535):
            raise ServeConfigError(f"admin_port must be a port number (0 for any free one) or null, got {port!r}")
        if not (isinstance(self.admin_host, str) and self.admin_host.strip()):
            raise ServeConfigError(f"admin_host must be a host name or address, got {self.admin_host!r}")


@dataclass(frozen=True)
class TrainingSettings:
    """The training sidecar: where its jobs are kept, what it may read, what Ray reserves for it."""

    jobs_dir: str | None = setting(None, "training jobs' records and checkpoints, never inside the store; "
                                         f"null: beside it, <store_dir>-jobs ({OBJECT_STORE_JOBS_DIR} with an s3:// store)")
    datasets_root: str | None = setting(None, "where POST /v1/train may read folder: and list: datasets; "
                                              "null: built-in datasets only")
    trainer_num_cpus: float = setting(0.0, "CPUs Ray reserves for the sidecar (raise it, or give it a node, to "
                                           "isolate training)")

    def __post_init__(self) -> None:
        if self.jobs_dir is not None and not self.jobs_dir.strip():
            raise ServeConfigError("jobs_dir must be a folder path or null")
        if self.trainer_num_cpus < 0:
            raise ServeConfigError("trainer_num_cpus must not be negative")


GROUPS = {"runtime": RuntimeConfig, "serving": ServingSettings, "limits": RequestLimits, "board": BoardSettings,
          "training": TrainingSettings}


@dataclass(frozen=True)
class ServeConfig:
    """Every setting of the served application, by group."""

    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    serving: ServingSettings = field(default_factory=ServingSettings)
    limits: RequestLimits = field(default_factory=RequestLimits)
    board: BoardSettings = field(default_factory=BoardSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)

    def __post_init__(self) -> None:
        if is_object_store(self.runtime.store_dir):
            return
        jobs, store = self.resolved_jobs_dir(), Path(self.runtime.store_dir).resolve()
        if jobs == store or jobs.is_relative_to(store) or store.is_relative_to(jobs):
            raise ServeConfigError(f"jobs_dir {str(jobs)!r} and store_dir {str(store)!r} must not contain each other")

    def resolved_jobs_dir(self) -> Path:
        if self.training.jobs_dir is not None:
            return Path(self.training.jobs_dir).resolve()
        if is_object_store(self.runtime.store_dir):
            return Path(OBJECT_STORE_JOBS_DIR).resolve()
        store = Path(self.runtime.store_dir).resolve()
        if not store.name:
            raise ServeConfigError("store_dir is the filesystem root: set jobs_dir explicitly")
        return store.with_name(f"{store.name}-jobs")

    @property
    def replica_num_gpus(self) -> int:
        """Ray gives each serving replica on "cuda" one GPU of its own, which it sees as "cuda"."""
        return 1 if parse_device(self.runtime.device).type == "cuda" else 0

    def resolved_admin_token(self) -> str | None:
        if self.board.admin_token is not None:
            return self.board.admin_token
        token = os.environ.get(ADMIN_TOKEN_ENV) or None
        return None if token is None else _check_admin_token(token, ADMIN_TOKEN_ENV)

    def with_settings(self, **flat: Any) -> "ServeConfig":
        """A copy with settings changed by their field names, whatever their group."""
        groups = _grouped(flat)
        return replace(self, **{name: replace(getattr(self, name), **values) for name, values in groups.items()})

    @classmethod
    def of(cls, **flat: Any) -> "ServeConfig":
        """The defaults with settings given by their field names, whatever their group."""
        return cls().with_settings(**flat)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ServeConfig":
        """From a config file's `args`: groups of fields, or fields by their names, or both."""
        flat: dict[str, Any] = {}
        for key, value in (data or {}).items():
            if key in GROUPS:
                if not isinstance(value, dict):
                    raise ServeConfigError(f"{key} must be a mapping of its settings, got {value!r}")
                flat.update(value)
            else:
                flat[key] = value
        if "backbone" in flat:
            flat["backbone"] = _backbone_from(flat["backbone"])
        for name in ("store_dir", "store_cache_dir", "jobs_dir", "datasets_root"):
            if flat.get(name) is not None:
                flat[name] = str(flat[name])
        try:
            return cls.of(**flat)
        except (TypeError, ValueError) as exc:
            raise exc if isinstance(exc, ServeConfigError) else ServeConfigError(str(exc)) from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _grouped(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    group_of = {f.name: group for group, kind in GROUPS.items() for f in fields(kind)}
    unknown = sorted(set(flat) - set(group_of))
    if unknown:
        raise ServeConfigError(f"unknown mosaserve settings: {unknown}; known: {sorted(group_of)}")
    groups: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        groups.setdefault(group_of[name], {})[name] = value
    return groups


def config_table() -> str:
    """The README's table of settings: every field of every group, its default and its help."""
    lines = ["| group | setting | default | what it does |", "| --- | --- | --- | --- |"]
    for group, kind in GROUPS.items():
        for f in fields(kind):
            lines.append(f"| {group} | `{f.name}` | `{_shown(f.default)}` | {f.metadata['help']} |")
    return "\n".join(lines)


def _shown(default: Any) -> str:
    return "embedded" if default == EMBEDDED_BACKBONE else "null" if default is None else str(default)


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
