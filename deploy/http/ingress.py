"""The HTTP API (FastAPI, OpenAPI docs at /docs): validation, decoding and auth here, model work in replicas."""

import asyncio
import time

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError

from ... import __version__
from ...adapters.images import BadImageError, decode_image, image_pixels
from ...runtime.answers import Answer
from ...runtime.errors import DeadlineExceededError, ServiceBusyError, UnknownTaskError
from ...runtime.task_ids import BACKBONE_TASK, validate_task_id
from ..admission import DEADLINE_HEADER, IngressAdmission
from ..config import MAX_TOP_K, ServeConfig
from ..messages import PredictItem, RowReply
from ..observability.metrics import RequestMetrics, exposition, merge_expositions
from ..observability.metrics import report_metrics_forever
from ..observability.task_labels import OTHER_TASK, TaskLabels
from ..process import freeze_startup_heap
from ..training.jobs import MAX_TRAIN_REQUEST_BYTES, parse_train_request
from .admin import register_task, register_tasks, remove_task
from .errors import BadRequest, NotFound, TooLarge, add_error_handlers, require_admin, status_of
from .open_inference import HEADER_LENGTH, infer_response, model_metadata, parse_infer_request
from .requests import PixelsInFlight, deadline_of, images_from_body, json_document, read_limited

app = FastAPI(title="mosaserve", version=__version__,
              description="One frozen ViT, many tasks: merged MoSA adapters picked per request by task id.")
add_error_handlers(app)
REPLICA_GONE = (RayActorError, ActorUnavailableError)
DEFAULT_PAGE, MAX_PAGE = 1000, 10_000  # tasks per page of GET /v1/tasks
ATTEMPTS = 4
# What a request answered without a prediction counts as in `mosaserve_requests_shed_total`.
SHED_REASON = ((ServiceBusyError, "queue_full"), (DeadlineExceededError, "deadline_passed"))


# Defined before the class: Serve's ingress wrapper captures module globals when it wraps the class.
async def predict_row(replicas, item: PredictItem) -> RowReply:
    """A prediction changes no state, so a row whose replica died mid-batch is sent again: Serve's router
    stops picking a dead replica once it sees it gone. Calls go by reference, not over Serve's gRPC data
    plane, whose router kept finished calls counted against a replica (BENCHMARKS.md)."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await replicas.predict.remote(item)
        except BackPressureError as exc:  # the rows waiting for a replica reached max_queued_requests
            raise ServiceBusyError(f"every replica is full and {exc}; retry later") from exc
        except REPLICA_GONE as exc:
            if attempt == ATTEMPTS:
                raise ServiceBusyError(f"no serving replica answered ({type(exc).__name__}); retry later",
                                       retry_after_s=2) from exc
            await asyncio.sleep(0.1 * attempt)  # let the router notice the dead replica


async def _by_deadline(answers, budget_s: float):
    """`answers` awaited at most `budget_s`: past it they are cancelled (the replicas drop the rows) and the
    request fails, so no answer ever leaves after its deadline."""
    try:
        return await asyncio.wait_for(answers, max(budget_s, 0.0))
    except TimeoutError as exc:
        raise DeadlineExceededError(f"no answer within the request's deadline ({DEADLINE_HEADER} or the service's "
                                    f"request_timeout_s)") from exc


def _image(index: int, read, data: bytes, max_pixels: int):
    """`read(data, max_pixels)` for the request's image `index`; its errors name the image."""
    try:
        return read(data, max_pixels)
    except BadImageError as exc:  # too large, or not an image
        raise type(exc)(f"image {index}: {exc}") from exc


def _task_list(tasks: str) -> list[str]:
    task_ids = [task.strip() for task in tasks.split(",")]
    if not all(task_ids) or len(set(task_ids)) != len(task_ids):
        raise BadRequest(f"tasks must be distinct task ids separated by commas, got {tasks!r}")
    return task_ids


def _check_version(task_id: str, asked: str | None, live: int | None) -> None:
    if asked is not None and asked != str(live):
        raise NotFound(f"version {asked!r} of task {task_id!r} is not served; the live version is {live}")


def _prediction(answer: Answer, replica: str) -> dict:
    if answer.embedding is not None:
        return {"version": None, "embedding": list(answer.embedding), "replica": replica}
    return {"version": answer.version, "top_k": [{"label": l, "probability": p} for l, p in answer.top],
            "replica": replica}


@serve.deployment
@serve.ingress(app)
class Ingress:
    """The main port: validates and decodes requests, sends rows to the replicas and changes to the task board."""

    async def __init__(self, config: ServeConfig, replicas, board, trainer) -> None:
        self.config, self.replicas, self.board, self.trainer = config, replicas, board, trainer
        self.admin_token = config.resolved_admin_token()
        self.process_id = f"ingress-{serve.get_replica_context().replica_id.unique_id}"
        self.registry = CollectorRegistry()
        self.metrics = RequestMetrics(self.registry)
        self.known_tasks: set[str] = {BACKBONE_TASK}  # ids known to be registered: others never get a label
        self.task_labels = TaskLabels(config.serving.task_series)
        self.in_flight = PixelsInFlight(config.limits.max_pixels_in_flight)
        self.admission = IngressAdmission()
        self._reporter = asyncio.get_running_loop().create_task(
            report_metrics_forever(board, self.process_id, self.registry))
        freeze_startup_heap()

    # --- inference -------------------------------------------------------------------------
    @app.post("/v1/tasks/{task_id}/predict")
    async def predict(self, task_id: str, request: Request, top_k: int | None = None,
                      timeout_ms: int | None = Header(None, alias=DEADLINE_HEADER, ge=1, description=(
                          "the request's deadline in milliseconds, at most the service's request_timeout_s: an "
                          "answer not ready by then is dropped and the request answered 504"))) -> JSONResponse:
        """Classify one image (raw JPEG/PNG/WebP body) or several (JSON {"image": b64} or {"images": [b64, ...]}).
        Answered 503 with Retry-After at once when the service cannot serve it before its deadline."""
        body, elapsed = await self._measured([task_id], self._predict(task_id, request, top_k, timeout_ms))
        return JSONResponse({**body, "latency_ms": round(elapsed * 1000, 3)})

    @app.post("/v1/predict")
    async def predict_tasks(self, request: Request, tasks: str, top_k: int | None = None,
                            timeout_ms: int | None = Header(None, alias=DEADLINE_HEADER, ge=1)) -> JSONResponse:
        """Classify the same image(s) for several tasks at once (`tasks=a,b,c`; the body as for one task): each
        image is decoded once and its rows join the mixed batches. Answers one entry per task, in order."""
        task_ids = _task_list(tasks)
        body, elapsed = await self._measured(task_ids, self._predict_tasks(task_ids, request, top_k, timeout_ms))
        return JSONResponse({**body, "latency_ms": round(elapsed * 1000, 3)})

    async def _measured(self, task_ids: list[str], answering) -> tuple[object, float]:
        """Counts the request under each task it names (unknown ids under one label), its latency and why it failed."""
        began = time.perf_counter()
        try:
            body = await answering
        except asyncio.CancelledError:  # the client went away; Serve cancels the rows it sent on, too
            self.metrics.shed.labels("client_gone").inc()
            raise
        except Exception as exc:
            self.metrics.failed({self._label(t) if t in self.known_tasks else OTHER_TASK for t in task_ids},
                                status_of(exc))
            reason = next((reason for kind, reason in SHED_REASON if isinstance(exc, kind)), None)
            if reason is not None:
                self.metrics.shed.labels(reason).inc()
            raise
        elapsed = time.perf_counter() - began
        self.known_tasks.update(task_ids)
        self.metrics.answered({self._label(t) for t in task_ids}, elapsed)
        return body, elapsed

    def _label(self, task_id: str) -> str:
        for dropped in self.task_labels.rerank():
            self.metrics.forget(dropped)
        return self.task_labels.label(task_id)

    async def _predict(self, task_id: str, request: Request, top_k: int | None, timeout_ms: int | None) -> dict:
        answers, queue_s = await self._answer(request, [task_id], top_k, timeout_ms)
        return {**answers[0], "queue_ms": round(queue_s * 1000, 3)}

    async def _predict_tasks(self, task_ids: list[str], request: Request, top_k: int | None,
                             timeout_ms: int | None) -> dict:
        answers, queue_s = await self._answer(request, task_ids, top_k, timeout_ms)
        return {"tasks": answers, "queue_ms": round(queue_s * 1000, 3)}

    async def _answer(self, request: Request, task_ids: list[str], top_k: int | None,
                      timeout_ms: int | None) -> tuple[list[dict], float]:
        """Every image of the request for every task: one answer per task (its predictions, one per image) and
        the longest queue wait of its rows."""
        k = self._top_k(top_k)
        deadline = self._admitted(task_ids, timeout_ms)
        raw = await self._body(request)
        limit = self.config.limits.max_images_per_request  # rows: images x tasks
        encoded = images_from_body(raw, request.headers.get("content-type", ""), limit)
        if len(encoded) * len(task_ids) > limit:
            raise TooLarge(f"{len(encoded)} images x {len(task_ids)} tasks = {len(encoded) * len(task_ids)} rows in "
                           f"one request; the limit is {limit} (max_images_per_request)")
        replies = await self._rows(encoded, task_ids, k, deadline)
        answers = []
        for index, task_id in enumerate(task_ids):
            mine = replies[index :: len(task_ids)]  # rows go image by image, every task for each image
            answers.append({"task_id": task_id, "version": mine[0].result.version,
                            "predictions": [_prediction(r.result, r.replica) for r in mine]})
        return answers, max(r.queue_s for r in replies)

    def _top_k(self, top_k: int | None) -> int:
        k = self.config.limits.default_top_k if top_k is None else top_k
        if not 1 <= k <= MAX_TOP_K:
            raise BadRequest(f"top_k must be between 1 and {MAX_TOP_K}, got {k}")
        return k

    def _admitted(self, task_ids: list[str], timeout_ms: int | None) -> float:
        """The request's deadline, once its task ids are valid and the service can take it: before any reading."""
        deadline = deadline_of(timeout_ms, self.config.limits.request_timeout_s)
        for task_id in task_ids:
            if task_id != BACKBONE_TASK:
                validate_task_id(task_id)
        if len(task_ids) > self.config.limits.max_images_per_request:
            raise TooLarge(f"{len(task_ids)} tasks in one request; the limit is "
                           f"{self.config.limits.max_images_per_request} (max_images_per_request)")
        refusal = self.admission.refusal(time.time(), deadline)
        if refusal is not None:
            raise refusal
        return deadline

    async def _body(self, request: Request) -> bytes:
        return await read_limited(request.stream(), request.headers.get("content-length"),
                                  self.config.limits.max_request_bytes, "request body")

    async def _rows(self, encoded: list[bytes], task_ids: list[str], k: int, deadline: float,
                    every_class: bool = False) -> list[RowReply]:
        """Decodes each image once and sends one row per image and task; raises the first row's error."""
        pixels = await asyncio.to_thread(self._pixels_of, encoded)
        self.in_flight.take(pixels)  # on the event loop, right before the try: a cancel can never skip giving back
        try:
            images = await asyncio.to_thread(self._decode_all, encoded)
            sent_at = time.time()
            rows = [predict_row(self.replicas, PredictItem(image, task_id, k, sent_at, deadline, every_class))
                    for image in images for task_id in task_ids]
            with self.admission.sending(len(rows)):
                replies: list[RowReply] = await _by_deadline(asyncio.gather(*rows), deadline - sent_at)
        finally:
            self.in_flight.give_back(pixels)  # the replicas are done with them
        for reply in replies:
            self.admission.tell(reply.replica, reply.rows_per_s)
        failed = next((r.result for r in replies if isinstance(r.result, Exception)), None)
        if failed is not None:
            raise failed
        return replies

    def _pixels_of(self, encoded: list[bytes]) -> int:
        """The request's pixels, from every image's header: a request over a budget decodes none."""
        limit = self.config.limits.max_image_pixels
        total = sum(_image(index, image_pixels, data, limit) for index, data in enumerate(encoded))
        if total > self.config.limits.max_request_pixels:
            raise TooLarge(f"the request's {len(encoded)} images hold {total} pixels together; the limit is "
                                f"{self.config.limits.max_request_pixels}: send fewer or smaller images per request")
        return total

    def _decode_all(self, encoded: list[bytes]) -> list:
        limit = self.config.limits.max_image_pixels
        return [_image(index, decode_image, data, limit) for index, data in enumerate(encoded)]

    # --- tasks -----------------------------------------------------------------------------
    @app.get("/v1/tasks")
    async def list_tasks(self, limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE), after: str | None = None) -> dict:
        """Registered tasks in id order, `limit` a page (the bare backbone leads the first), each as task_id,
        version, method and num_classes (the rest on GET /v1/tasks/{id}); `next` is the next page's `after`,
        null on the last page."""
        return await self.replicas.page.remote(after, limit)

    @app.get("/v1/tasks/{task_id}")
    async def get_task(self, task_id: str) -> dict:
        return await self._task(task_id)

    async def _task(self, task_id: str, version: str | None = None) -> dict:
        if task_id != BACKBONE_TASK:
            validate_task_id(task_id)
        found = await self.replicas.describe.remote(task_id)
        if found is None:
            raise UnknownTaskError(f"task {task_id!r} is not registered")
        _check_version(task_id, version, found["version"])
        return found

    @app.put("/v1/tasks/{task_id}")
    async def put_task(self, task_id: str, request: Request) -> JSONResponse:
        """Register or replace a task: the body is its adapter file (.safetensors), or JSON {"source":
        "s3://bucket/key"} naming it. Admin token required. The task board's admin port, where configured, takes the same request off the serving processes."""
        answer = await register_task(task_id, request, self.config, self.admin_token, self.board.register.remote)
        self.known_tasks.add(task_id)
        return answer

    @app.post("/v1/tasks")
    async def post_tasks(self, request: Request) -> JSONResponse:
        """Register or replace many tasks at once: the body is a tar archive of <task_id>.safetensors files,
        all validated before any is published. Answers each task's version and whether it changed. Admin."""
        return await register_tasks(request, self.config, self.admin_token, self.board.register_many.remote)

    @app.delete("/v1/tasks/{task_id}")
    async def delete_task(self, task_id: str, request: Request) -> JSONResponse:
        answer = await remove_task(task_id, request, self.admin_token, self.board.remove.remote)
        self.known_tasks.discard(task_id)
        if self.task_labels.forget(task_id):
            self.metrics.forget(task_id)
        return answer

    # --- training --------------------------------------------------------------------------
    @app.post("/v1/train")
    async def submit_training(self, request: Request) -> JSONResponse:
        """Train a task: JSON {task_id, dataset, method?, epochs?, train_size?, test_size?, lr?, seed?}. Admin."""
        require_admin(request.headers.get("authorization"), self.admin_token)
        raw = await read_limited(request.stream(), request.headers.get("content-length"), MAX_TRAIN_REQUEST_BYTES,
                                 "request body")
        job = await self.trainer.submit.remote(parse_train_request(json_document(raw or b"null"), self.config.training.datasets_root))
        return JSONResponse(job, status_code=202)

    @app.get("/v1/train/{job_id}")
    async def training_status(self, job_id: str, request: Request) -> dict:
        """A job's state, epoch, loss, ETA, test accuracy and, once live, the task version. Admin."""
        require_admin(request.headers.get("authorization"), self.admin_token)
        return await self._job(self.trainer.status, job_id)

    @app.delete("/v1/train/{job_id}")
    async def cancel_training(self, job_id: str, request: Request) -> dict:
        """Cancel a queued or running job (a running one stops at its next epoch end; one past its last epoch
        goes live and answers cancel_requested false). Admin."""
        require_admin(request.headers.get("authorization"), self.admin_token)
        return await self._job(self.trainer.cancel, job_id)

    async def _job(self, method, job_id: str) -> dict:
        found = await method.remote(job_id)
        if found is None:
            raise NotFound(f"no training job {job_id!r}")
        return found

    # --- the Open Inference Protocol (KServe V2): another door to the same replicas -------------
    @app.get("/v2/health/live")
    async def v2_live(self) -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def v2_ready(self) -> JSONResponse:
        ready = bool((await self.board.status.remote())["replicas"])
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/v2")
    async def v2_server(self) -> dict:
        return {"name": "mosaserve", "version": __version__, "extensions": ["binary_tensor_data", "classification"]}

    @app.get("/v2/models/{task_id}")
    async def v2_model(self, task_id: str) -> dict:
        """A task as a model: its live version, the BYTES input `image`, its outputs."""
        return model_metadata(await self._task(task_id))

    @app.get("/v2/models/{task_id}/versions/{version}")
    async def v2_model_version(self, task_id: str, version: str) -> dict:
        return model_metadata(await self._task(task_id, version))

    @app.get("/v2/models/{task_id}/ready")
    async def v2_model_ready(self, task_id: str) -> dict:
        return {"name": (await self._task(task_id))["task_id"], "ready": True}

    @app.get("/v2/models/{task_id}/versions/{version}/ready")
    async def v2_model_version_ready(self, task_id: str, version: str) -> dict:
        return {"name": (await self._task(task_id, version))["task_id"], "ready": True}

    @app.post("/v2/models/{task_id}/infer")
    async def v2_infer(self, task_id: str, request: Request,
                       timeout_ms: int | None = Header(None, alias=DEADLINE_HEADER, ge=1)) -> Response:
        """Classify encoded images (BYTES input `image`, JSON or the binary tensor extension) with the live
        version: outputs `probabilities` (FP32 [N, classes]) and `labels` (BYTES [N, top_k])."""
        return await self._v2_infer(task_id, None, request, timeout_ms)

    @app.post("/v2/models/{task_id}/versions/{version}/infer")
    async def v2_infer_version(self, task_id: str, version: str, request: Request,
                               timeout_ms: int | None = Header(None, alias=DEADLINE_HEADER, ge=1)) -> Response:
        """As /v2/models/{task_id}/infer, answered 404 unless `version` is the live one."""
        return await self._v2_infer(task_id, version, request, timeout_ms)

    async def _v2_infer(self, task_id: str, version: str | None, request: Request,
                        timeout_ms: int | None) -> Response:
        (body, header_length), _ = await self._measured([task_id], self._open_inference(task_id, version, request,
                                                                                        timeout_ms))
        if header_length is None:
            return Response(body, media_type="application/json")
        return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})

    async def _open_inference(self, task_id: str, version: str | None, request: Request,
                              timeout_ms: int | None) -> tuple[bytes, int | None]:
        deadline = self._admitted([task_id], timeout_ms)
        limits = self.config.limits
        wanted = parse_infer_request(await self._body(request), request.headers.get(HEADER_LENGTH),
                                     limits.max_images_per_request)
        replies = await self._rows(wanted.images, [task_id], self._top_k(wanted.top_k), deadline, every_class=True)
        answers = [reply.result for reply in replies]
        _check_version(task_id, version, answers[0].version)  # the live version is what answered
        return infer_response(task_id, wanted, answers)

    # --- operations ------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        status = await self.board.status.remote()
        ready = bool(status["replicas"])
        return JSONResponse({"status": "ok" if ready else "starting", "replicas": len(status["replicas"]),
                             "admin_url": status["admin_url"]}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics(self) -> Response:
        """Prometheus metrics of every process of the application (labelled by replica)."""
        texts = await self.board.metric_texts.remote()
        # Rendering grows with every task this process has seen (BENCHMARKS.md): in a thread, so this event
        # loop keeps taking requests.
        return Response(await asyncio.to_thread(self._merged_metrics, texts), media_type=CONTENT_TYPE_LATEST)

    def _merged_metrics(self, texts: dict[str, str]) -> bytes:
        texts[self.process_id] = exposition(self.registry)  # this process's own, fresh
        return merge_expositions(texts)
