"""The served application on a real local Ray cluster: HTTP round trips, live registration, restarts, errors, metrics."""

from __future__ import annotations

import base64
import copy
import io
import threading
import time
from collections import Counter

import pytest
import requests
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from mosaserve.adapters.images import decode_image
from mosaserve.adapters.preprocess import Preprocessor
from mosaserve.runtime.store import AdapterStore

from .conftest import APP, TOKEN, crash_actor, deploy, live_actors, wait_healthy


def png(size=(20, 20), color=(120, 40, 200), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 0).save(out, "PNG")
    return out.getvalue()


def jpeg(size=(24, 18)) -> bytes:
    out = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(out, "JPEG")
    return out.getvalue()


def holding_store_writer_lock(service):
    """The store's own writer lock (its flock), held here: the service's writes wait until it is let go."""
    return AdapterStore(service.config.runtime.store_dir)._flocked()


def expected_top(service, model, image_bytes: bytes) -> tuple[str, float]:
    """What the task's adapted model says, run alone in this process."""
    with torch.inference_mode():
        probs = torch.softmax(model(Preprocessor(service.info)(decode_image(image_bytes))), -1)[0]
    return f"class{int(probs.argmax())}", float(probs.max())


def test_register_then_predict_raw_and_json_bodies_match_the_model_run_alone(service):
    data, model = service.adapter(seed=11, classes=4)
    r = service.put("flowers", data)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["servable_everywhere"] and body["replicas"] == 2 and body["task"]["version"] == 1
    assert body["task"]["num_classes"] == 4 and body["task"]["method"] == "mosa"

    image_png, image_jpeg = png(), jpeg()
    raw = service.predict("flowers", image_png, top_k=2)
    assert raw.status_code == 200, raw.text
    answer = raw.json()
    assert answer["task_id"] == "flowers" and answer["version"] == 1 and answer["latency_ms"] > 0
    top = answer["predictions"][0]["top_k"]
    label, prob = expected_top(service, model, image_png)
    assert len(top) == 2 and top[0]["label"] == label and top[0]["probability"] == pytest.approx(prob, abs=1e-4)

    listed = {"images": [base64.b64encode(b).decode() for b in (image_png, image_jpeg)]}
    both = requests.post(f"{service.url}/v1/tasks/flowers/predict", json=listed, timeout=60).json()
    for got, image in zip(both["predictions"], (image_png, image_jpeg)):
        label, prob = expected_top(service, model, image)
        assert got["top_k"][0]["label"] == label and got["top_k"][0]["probability"] == pytest.approx(prob, abs=1e-4)
    single = requests.post(f"{service.url}/v1/tasks/flowers/predict", timeout=60,
                           json={"image": "data:image/jpeg;base64," + base64.b64encode(image_jpeg).decode()}).json()
    # The same image in batches of other sizes: equal up to float rounding, not bit for bit.
    for got, want in zip(single["predictions"][0]["top_k"], both["predictions"][1]["top_k"]):
        assert got["label"] == want["label"] and got["probability"] == pytest.approx(want["probability"], abs=1e-4)

    webp = io.BytesIO()
    decoded = decode_image(image_png)
    Image.fromarray(decoded.permute(1, 2, 0).numpy()).save(webp, "WEBP", lossless=True)
    same = service.predict("flowers", webp.getvalue(), top_k=2, content_type="image/webp").json()
    assert same["predictions"][0]["top_k"] == raw.json()["predictions"][0]["top_k"]  # the same pixels, losslessly

    bare = service.predict("__backbone__", image_png).json()
    with torch.inference_mode():
        features = service.backbone(Preprocessor(service.info)(decode_image(image_png)))[0]
    torch.testing.assert_close(torch.tensor(bare["predictions"][0]["embedding"]), features, atol=1e-4, rtol=1e-4)


def test_one_request_for_several_tasks_answers_each_as_its_own_request_would(service):
    models = {}
    for task_id, seed, classes in (("multi-a", 41, 3), ("multi-b", 42, 5)):
        data, models[task_id] = service.adapter(seed=seed, classes=classes)
        assert service.put(task_id, data).status_code == 201
    image_png, image_jpeg = png(), jpeg()
    url = f"{service.url}/v1/predict"
    both = requests.post(url, params={"tasks": "multi-b,multi-a,__backbone__", "top_k": 2}, data=image_png,
                         headers={"Content-Type": "image/png"}, timeout=60)
    assert both.status_code == 200, both.text
    answers = both.json()["tasks"]
    assert [a["task_id"] for a in answers] == ["multi-b", "multi-a", "__backbone__"]
    for answer in answers[:2]:
        label, prob = expected_top(service, models[answer["task_id"]], image_png)
        top = answer["predictions"][0]["top_k"]
        assert answer["version"] == 1 and len(top) == 2
        assert top[0]["label"] == label and top[0]["probability"] == pytest.approx(prob, abs=1e-4)
    assert len(answers[2]["predictions"][0]["embedding"]) == service.info.num_features

    two_images = {"images": [base64.b64encode(b).decode() for b in (image_png, image_jpeg)]}
    grid = requests.post(url, params={"tasks": "multi-a,multi-b"}, json=two_images, timeout=60).json()["tasks"]
    for answer in grid:
        assert [p["top_k"][0]["label"] for p in answer["predictions"]] == [
            expected_top(service, models[answer["task_id"]], image)[0] for image in (image_png, image_jpeg)]

    for tasks, body, status in (("multi-a,nobody", image_png, 404), ("multi-a,multi-a", image_png, 400),
                                ("multi-a,,multi-b", image_png, 400), ("multi-a,bad..id", image_png, 400),
                                (",".join(f"t{i}" for i in range(5)), image_png, 413)):
        r = requests.post(url, params={"tasks": tasks}, data=body, headers={"Content-Type": "image/png"}, timeout=60)
        assert r.status_code == status, (tasks, r.text)
    three_images = {"images": [base64.b64encode(image_png).decode()] * 3}  # 3 x 2 = 6 rows, over the limit of 4
    over = requests.post(url, params={"tasks": "multi-a,multi-b"}, json=three_images, timeout=60)
    assert over.status_code == 413 and "6 rows" in over.json()["error"]


def test_the_open_inference_protocol_through_triton_s_http_client(service):
    """KServe V2 spoken by a client nobody here wrote: metadata, JSON and binary tensors, single and batched,
    the classification extension, and the protocol's errors, on the same replicas as the native API."""
    import numpy as np
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    data, model = service.adapter(seed=51, classes=4)
    assert service.put("oip", data).status_code == 201
    client = triton.InferenceServerClient(service.url.removeprefix("http://"), network_timeout=60)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("oip", "1")
    assert set(client.get_server_metadata()["extensions"]) == {"binary_tensor_data", "classification"}
    metadata = client.get_model_metadata("oip", "1")
    assert metadata["versions"] == ["1"] and metadata["inputs"] == [{"name": "image", "datatype": "BYTES",
                                                                      "shape": [-1]}]
    assert metadata["outputs"][0] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]}

    images = [png(), jpeg()]
    with torch.inference_mode():
        expected = [torch.softmax(model(Preprocessor(service.info)(decode_image(i))), -1)[0].numpy() for i in images]
    for binary in (False, True):
        tensor = triton.InferInput("image", [2], "BYTES")
        tensor.set_data_from_numpy(np.array([i if binary else base64.b64encode(i) for i in images], dtype=object),
                                   binary_data=binary)
        outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("probabilities", "labels")]
        result = client.infer("oip", [tensor], model_version="1", outputs=outputs, request_id="r1",
                              parameters={"top_k": 2})
        assert result.get_response()["model_version"] == "1" and result.get_response()["id"] == "r1"
        assert np.allclose(result.as_numpy("probabilities"), expected, atol=1e-4)
        labels = [[x.decode() if isinstance(x, bytes) else x for x in row] for row in result.as_numpy("labels")]
        assert [row[0] for row in labels] == [f"class{int(e.argmax())}" for e in expected] and len(labels[0]) == 2

    one = triton.InferInput("image", [1], "BYTES")
    one.set_data_from_numpy(np.array([images[0]], dtype=object))
    ranked = client.infer("oip", [one], outputs=[triton.InferRequestedOutput("probabilities", class_count=2)])
    assert ranked.as_numpy("probabilities")[0][0].decode().split(":")[1] == str(int(expected[0].argmax()))
    assert client.infer("__backbone__", [one]).as_numpy("embedding").shape == (1, service.info.num_features)

    wrong = triton.InferInput("pixels", [1], "BYTES")
    wrong.set_data_from_numpy(np.array([images[0]], dtype=object))
    junk = triton.InferInput("image", [1], "BYTES")
    junk.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    for call, status, says in ((lambda: client.infer("nobody", [one]), "404", "not registered"),
                               (lambda: client.infer("oip", [one], model_version="7"), "404", "live version is 1"),
                               (lambda: client.get_model_metadata("oip", "7"), "404", "live version is 1"),
                               (lambda: client.infer("oip", [wrong]), "400", "unknown input 'pixels'"),
                               (lambda: client.infer("oip", [junk]), "400", "image 0")):
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == status and says in refused.value.message()
    assert not client.is_model_ready("nobody")
    tensor = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(images[0]).decode()]}
    raw = requests.post(f"{service.url}/v2/models/nobody/infer", json={"inputs": [tensor]}, timeout=30)
    assert raw.status_code == 404 and set(raw.json()) == {"error"}  # the protocol's error shape
    client.close()


def test_lora_tasks_are_served_beside_mosa_tasks(service):
    data, model = service.adapter(seed=14, classes=5, method="lora")
    assert service.put("lora-task", data).status_code == 201
    answer = service.predict("lora-task", png()).json()
    label, prob = expected_top(service, model, png())
    assert answer["predictions"][0]["top_k"][0] == {"label": label, "probability": pytest.approx(prob, abs=1e-4)}


def test_listing_tasks_page_by_page_and_describing_one(service):
    for i in range(5):
        assert service.put(f"listed{i}", service.adapter(seed=12, classes=2)[0]).status_code in (200, 201)
    url = f"{service.url}/v1/tasks"
    first = requests.get(url, params={"limit": 2}, timeout=30).json()
    assert first["tasks"][0] == {"task_id": "__backbone__", "version": None, "method": "none", "num_classes": 0}
    pages, after = [first["tasks"][1:]], first["next"]
    while after is not None:  # each page continues where the one before ended, in id order
        page = requests.get(url, params={"limit": 2, "after": after}, timeout=30).json()
        assert len(page["tasks"]) <= 2 and page["tasks"][0]["task_id"] > after
        pages.append(page["tasks"])
        after = page["next"]
    paged = [t for page in pages for t in page]
    whole = requests.get(url, timeout=30).json()
    assert whole["next"] is None and paged == whole["tasks"][1:] == sorted(paged, key=lambda t: t["task_id"])
    assert [t["task_id"] for t in paged if t["task_id"].startswith("listed")] == [f"listed{i}" for i in range(5)]
    listed = next(t for t in paged if t["task_id"] == "listed0")
    assert listed == {"task_id": "listed0", "version": 1, "method": "mosa", "num_classes": 2}
    one = requests.get(f"{service.url}/v1/tasks/listed0", timeout=30).json()
    assert one["labels"] == ["class0", "class1"] and one["backbone"]["fingerprint"] == service.info.fingerprint
    assert {k: one[k] for k in listed} == listed
    assert requests.get(url, params={"limit": 0}, timeout=30).status_code == 400
    from mosaserve.client import Client

    assert Client(service.url).tasks(page_size=2) == whole["tasks"]


def test_both_replicas_serve_a_task_registered_after_start(service):
    r = service.put("late", service.adapter(seed=13)[0])
    assert r.json()["servable_everywhere"] and r.json()["pending"] == []
    served_by, statuses = set(), []
    for _ in range(60):  # right after the PUT, every replica must already have it
        reply = service.predict("late", png())
        statuses.append(reply.status_code)
        served_by.add(reply.json()["predictions"][0]["replica"])
        if len(served_by) == 2:
            break
    assert set(statuses) == {200} and len(served_by) == 2, (served_by, Counter(statuses))


def test_requests_after_a_multi_image_request_still_reach_both_replicas(service):
    """The router must release a replica's slots as its calls finish: one that held them (Ray 2.60's gRPC data
    plane did, for seconds) sends every request after a multi-image one to the other replica."""
    assert service.put("spread", service.adapter(seed=15)[0]).status_code in (200, 201)
    images = {"images": [base64.b64encode(png()).decode()] * 4}
    assert requests.post(f"{service.url}/v1/tasks/spread/predict", json=images, timeout=60).status_code == 200
    served_by = Counter(service.predict("spread", png()).json()["predictions"][0]["replica"] for _ in range(40))
    assert len(served_by) == 2, served_by


def test_an_up_to_date_replica_s_heartbeat_waits_at_the_board_and_hears_of_a_change_at_once(service):
    from ray import serve

    board = serve.get_deployment_handle("TaskBoard", APP)
    generation = board.status.remote().result(timeout_s=30)["generation"]
    waiting = board.heartbeat.remote("probe-replica", generation, None, None, 60.0)  # a long poll of up to 60 s
    with pytest.raises(TimeoutError):
        waiting.result(timeout_s=1.0)  # nothing changed: no answer yet
    replies = []
    upload = threading.Thread(target=lambda: replies.append(service.put("heard", service.adapter(seed=60)[0])))
    upload.start()
    try:
        announced = waiting.result(timeout_s=30)  # answered at the announcement, long before its 60 s
        assert announced > generation
        board.heartbeat.remote("probe-replica", announced).result(timeout_s=30)  # caught up: the PUT may answer
        upload.join(timeout=60)
    finally:
        board.leave.remote("probe-replica").result(timeout_s=30)
    assert replies[0].status_code == 201 and replies[0].json()["servable_everywhere"]
    assert replies[0].json()["replicas"] == 3  # it waited for the probe as for the two serving replicas


def test_a_task_whose_outputs_overflow_answers_500_while_its_batch_mates_are_served(service):
    from ..runtime.helpers import adapter_bytes, random_model

    model = random_model(copy.deepcopy(service.backbone), seed=62)
    with torch.no_grad():
        model.head.out.weight.fill_(3e38)  # finite, so the file is valid, but its logits overflow
    assert service.put("overflowing", adapter_bytes(model, service.info)).status_code in (200, 201)
    assert service.put("steady-mate", service.adapter(seed=63)[0]).status_code in (200, 201)
    image, replies = png(), {}

    def send(i: int) -> None:
        task = "overflowing" if i % 2 else "steady-mate"
        replies[i] = (task, service.predict(task, image))

    senders = [threading.Thread(target=send, args=(i,)) for i in range(12)]  # together, so they share batches
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=60)
    for task, reply in replies.values():
        if task == "overflowing":
            assert reply.status_code == 500 and "'overflowing' v1 produced non-finite outputs" in reply.json()["error"]
        else:
            assert reply.status_code == 200, reply.text
    assert len(replies) == 12


def test_requests_past_the_decoded_pixels_in_flight_are_answered_503_and_give_their_share_back(service):
    assert service.put("roomy", service.adapter(seed=64)[0]).status_code in (200, 201)
    full = base64.b64encode(png(size=(1000, 1000))).decode()
    url, replies = f"{service.url}/v1/tasks/roomy/predict", []

    def send() -> None:  # 2M pixels each: one fits the 3M in flight, two do not
        replies.append(requests.post(url, json={"images": [full] * 2}, timeout=120))

    senders = [threading.Thread(target=send) for _ in range(12)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=180)
    statuses = sorted(r.status_code for r in replies)
    assert len(statuses) == 12 and set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    for busy in (r for r in replies if r.status_code == 503):
        assert busy.headers["Retry-After"] == "1" and "would pass its limit of 3000000" in busy.json()["error"]
    # Every request gave its pixels back, answered or refused: the next one alone fits again.
    assert requests.post(url, json={"images": [full] * 2}, timeout=60).status_code == 200


def test_a_replica_still_loading_is_not_counted_as_serving(service):
    from ray import serve

    board = serve.get_deployment_handle("TaskBoard", APP)
    board.heartbeat.remote("probe-starting", None).result(timeout_s=30)  # a replica's first beat, before its load
    try:
        health = requests.get(f"{service.url}/healthz", timeout=30).json()
        assert health["status"] == "ok" and health["replicas"] == 2
    finally:
        board.leave.remote("probe-starting").result(timeout_s=30)


def test_a_removal_whose_client_went_away_still_reaches_every_replica(service):
    image = png()
    assert service.put("abandoned", service.adapter(seed=61)[0]).status_code in (200, 201)
    assert service.predict("abandoned", image).status_code == 200
    # Hold the store's writer lock, so the board's removal waits in its thread while the client gives up;
    # Serve then cancels the request, and the board's call with it.
    with holding_store_writer_lock(service):
        with pytest.raises(requests.Timeout):
            requests.delete(f"{service.url}/v1/tasks/abandoned", headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=1.0)
        time.sleep(1.0)  # the disconnect travels: proxy, ingress, board
    # The removal is made once the lock is free; it must be announced, so no replica keeps serving the task.
    deadline, statuses = time.monotonic() + 20, []
    while time.monotonic() < deadline:
        statuses = [service.predict("abandoned", image).status_code for _ in range(6)]
        if set(statuses) == {404}:
            break
        time.sleep(0.2)
    assert set(statuses) == {404}


def test_a_burst_of_changes_reaches_a_replica_in_passes_at_least_sync_coalesce_s_apart(service):
    import gc

    from ray import serve

    board, window = serve.get_deployment_handle("TaskBoard", APP), service.config.board.sync_coalesce_s
    assert window > 0
    generation = board.status.remote().result(timeout_s=30)["generation"]
    replies, answers = [], []

    def upload(task: str, seed: int) -> threading.Thread:
        thread = threading.Thread(target=lambda: replies.append(service.put(task, service.adapter(seed=seed)[0])))
        thread.start()
        return thread

    gc.disable()  # no pause of this process between an answer and its reading
    try:
        waiting = board.heartbeat.remote("probe-replica", generation, None, None, 60.0)
        first = upload("burst-a", 61)
        answers.append((waiting.result(timeout_s=30), time.monotonic()))  # isolated news: at once
        # Caught up, and at once the next change of the burst: the answer waits for the window to pass.
        waiting = board.heartbeat.remote("probe-replica", answers[0][0], None, None, 60.0)
        first.join(timeout=60)
        second = upload("burst-b", 62)
        answers.append((waiting.result(timeout_s=30), time.monotonic()))
        board.heartbeat.remote("probe-replica", answers[1][0]).result(timeout_s=30)
        second.join(timeout=60)
    finally:
        gc.enable()
        board.leave.remote("probe-replica").result(timeout_s=30)
    assert answers[1][0] > answers[0][0] > generation
    assert answers[1][1] - answers[0][1] >= window - 0.05  # the board held it (the 0.05: delivery of the first)
    assert [r.status_code for r in replies] == [201, 201] and all(r.json()["servable_everywhere"] for r in replies)


def processes_of(name_part: str) -> list:
    import psutil

    return [psutil.Process(a["Pid"]) for a in live_actors(name_part)]


def test_the_task_board_that_accepts_uploads_runs_below_the_serving_replicas_os_priority(service):
    import psutil

    board, replicas = processes_of("#TaskBoard#"), processes_of("#TaskReplica#")
    assert len(board) == 1 and len(replicas) == 2
    serving = {r.nice() for r in replicas}  # Ray starts its workers at 15
    lowered = min(19, serving.pop() + service.config.board.board_nice)
    assert len(serving) == 0 and lowered > 15
    board_threads = [psutil.Process(board[0].pid)] + [psutil.Process(t.id) for t in board[0].threads()]
    assert {t.nice() for t in board_threads} == {lowered}  # every thread: Ray's calls arrive on threads of their own
    reply = service.put("board-made", service.adapter(seed=40)[0])
    assert reply.status_code == 201 and reply.json()["servable_everywhere"] and reply.json()["replicas"] == 2


def test_every_process_a_prediction_or_upload_passes_sends_arguments_up_to_1_mib_inline(service):
    # Images and uploads are a few hundred kB: over Ray's default 100 KiB they would go through the raylet.
    path = {name: processes_of(name) for name in ("SERVE_PROXY_ACTOR", "#Ingress#", "#TaskReplica#", "#TaskBoard#")}
    assert [len(found) for found in path.values()] == [1, 1, 2, 1]
    for name, found in path.items():
        for process in found:
            assert process.environ().get("RAY_max_direct_call_object_size") == str(2**20), name


def test_replacing_and_adding_tasks_under_load_fails_no_request(service):
    first, _ = service.adapter(seed=21)
    service.put("busy", first)
    stop, failures, versions = threading.Event(), [], []
    lock = threading.Lock()

    def client(task_id: str):
        while not stop.is_set():
            reply = service.predict(task_id, png())
            with lock:
                if reply.status_code != 200:
                    failures.append((reply.status_code, reply.text))
                else:
                    versions.append(reply.json()["version"])

    clients = [threading.Thread(target=client, args=(t,)) for t in ("busy", "busy", "__backbone__")]
    for c in clients:
        c.start()
    try:
        time.sleep(0.5)
        for seed in range(22, 26):  # four new versions of the busy task, and other tasks arriving
            assert service.put("busy", service.adapter(seed=seed)[0]).status_code == 200
            assert service.put(f"extra{seed}", service.adapter(seed=seed)[0]).status_code == 201
        time.sleep(0.5)
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=60)
    assert failures == []
    served = [v for v in versions if v is not None]
    assert len(served) > 10 and max(served) == 5 and len(set(served)) >= 2


def test_error_codes_for_bad_requests(service):
    url = service.url
    service.put("known", service.adapter(seed=31)[0])
    assert service.predict("nobody", png()).status_code == 404
    assert service.predict("bad..id", png()).status_code == 400
    assert service.predict("known", b"not an image").status_code == 400
    assert service.predict("known", png()[:40]).status_code == 400  # truncated
    assert service.predict("known", b"").status_code == 400
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, "GIF")
    assert service.predict("known", gif.getvalue()).status_code == 400  # not JPEG or PNG
    assert service.predict("known", png(size=(2000, 1000))).status_code == 413  # over max_image_pixels
    assert service.predict("known", png(size=(20000, 20000), mode="1")).status_code == 413  # bomb: tiny file
    assert service.predict("known", b"\0" * (300 * 1024)).status_code == 413  # body over the limit
    assert service.predict("known", b"{not json", "application/json").status_code == 400
    assert service.predict("known", b'{"image": "@@@"}', "application/json").status_code == 400
    five = {"images": [base64.b64encode(png()).decode()] * 5}
    assert requests.post(f"{url}/v1/tasks/known/predict", json=five, timeout=30).status_code == 413
    # Each image at max_image_pixels (1M), three together over max_request_pixels (2M): refused from the headers.
    full = base64.b64encode(png(size=(1000, 1000))).decode()
    three = requests.post(f"{url}/v1/tasks/known/predict", json={"images": [full] * 3}, timeout=30)
    assert three.status_code == 413 and "hold 3000000 pixels together; the limit is 2000000" in three.json()["error"]
    two = requests.post(f"{url}/v1/tasks/known/predict", json={"images": [full] * 2}, timeout=60)
    assert two.status_code == 200 and len(two.json()["predictions"]) == 2
    assert service.predict("known", png(), top_k=0).status_code == 400
    for reply in (service.predict("nobody", png()), service.predict("known", b"x")):
        assert reply.json()["error"]  # a message, not an empty body

    data, _ = service.adapter(seed=32)
    assert service.put("x", data, token=None).status_code == 401
    assert service.put("x", data, token="wrong").status_code == 401
    assert requests.delete(f"{url}/v1/tasks/known", timeout=30).status_code == 401
    bad = service.put("x", b"definitely not safetensors")
    assert bad.status_code == 422 and "safetensors" in bad.json()["error"].lower()
    other_backbone = data.replace(service.info.fingerprint.encode(), b"0" * 64)
    assert service.put("x", other_backbone).status_code == 422
    truncated = service.put("x", data[:-100])
    assert truncated.status_code == 422 and truncated.json()["error"]
    assert service.put("bad..id", data).status_code == 400
    assert requests.get(f"{url}/v1/tasks/x", timeout=30).status_code == 404
    gone = requests.delete(f"{url}/v1/tasks/known", headers={"Authorization": "Bearer test-admin-token"}, timeout=30)
    assert gone.status_code == 200 and gone.json()["servable_everywhere"]
    assert service.predict("known", png()).status_code == 404
    assert requests.delete(f"{url}/v1/tasks/known", headers={"Authorization": "Bearer test-admin-token"},
                           timeout=30).status_code == 404
    assert service.predict("__backbone__", png()).status_code == 200  # still serving


def test_many_tasks_registered_in_one_request_on_either_port_and_by_the_cli(service, tmp_path):
    from ray import serve

    from mosaserve import client as c
    from mosaserve.cli import main

    files = {f"bulk{i}": service.adapter(seed=60 + i, classes=2)[0] for i in range(6)}
    admin = c.Client(service.url, token=TOKEN)
    answer = admin.register_many(dict(list(files.items())[:3]))
    assert answer["servable_everywhere"] and answer["replicas"] == 2
    assert answer["tasks"] == [{"task_id": f"bulk{i}", "version": 1, "created": True, "changed": True} for i in range(3)]
    assert {f"bulk{i}" for i in range(3)} <= {t["task_id"] for t in admin.tasks()}
    assert service.predict("bulk2", png()).json()["version"] == 1

    folder = tmp_path / "adapters"
    folder.mkdir()
    for task_id, data in files.items():
        (folder / f"{task_id}.safetensors").write_bytes(data)
    board = serve.get_deployment_handle("TaskBoard", APP)
    admin_url = requests.get(f"{service.url}/healthz", timeout=30).json()["admin_url"]
    assert main(["register", str(folder), "--url", admin_url, "--token", TOKEN, "--batch-mb", "1"]) == 0
    versions = {t["task_id"]: t["version"] for t in admin.tasks() if t["task_id"].startswith("bulk")}
    assert versions == {task_id: 1 for task_id in files}  # the first three again: unchanged, no new version
    generation = board.status.remote().result(timeout_s=30)["generation"]
    again = admin.register_many(files)
    assert not any(t["changed"] for t in again["tasks"]) and again["servable_everywhere"]
    assert board.status.remote().result(timeout_s=30)["generation"] == generation  # nothing announced

    with pytest.raises(c.InvalidAdapterError, match="task 'bulk-broken'"):
        admin.register_many({"bulk-new": files["bulk0"], "bulk-broken": b"not an adapter"})
    assert "bulk-new" not in {t["task_id"] for t in admin.tasks()}  # none of the request was published
    with pytest.raises(c.UnauthorizedError):
        c.Client(service.url, token="wrong").register_many(files)
    refused = requests.post(f"{service.url}/v1/tasks", data=b"not a tar" * 100, timeout=30,
                            headers={"Authorization": f"Bearer {TOKEN}"})
    assert refused.status_code == 400 and "tar" in refused.json()["error"]


def test_the_board_s_admin_port_changes_tasks_as_the_main_port_does(service):
    admin = requests.get(f"{service.url}/healthz", timeout=30).json()["admin_url"]
    assert admin.startswith("http://127.0.0.1:") and admin != service.url  # admin_port 0: a free port, named here
    task_url = f"{admin}/v1/tasks/side-door"

    def put(body: bytes, token: str | None = TOKEN, url: str = task_url) -> requests.Response:
        return requests.put(url, data=body, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=60)

    first, second = service.adapter(seed=50)[0], service.adapter(seed=51)[0]
    refused = put(first, token=None)
    assert refused.status_code == 401 and refused.json()["status"] == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    assert put(first, token="wrong").status_code == 401
    bad = put(b"definitely not safetensors")
    assert bad.status_code == 422 and "safetensors" in bad.json()["error"].lower()
    assert put(b"").status_code == 422
    assert put(b"\0" * (service.config.runtime.max_adapter_bytes + 1)).status_code == 413
    assert put(first, url=f"{admin}/v1/tasks/bad..id").status_code == 400
    assert service.predict("side-door", png()).status_code == 404  # nothing refused was published

    created = put(first)
    assert created.status_code == 201 and created.json()["servable_everywhere"] and created.json()["replicas"] == 2
    assert created.json()["task"]["version"] == 1
    versions, served_by = set(), set()
    for _ in range(60):  # right after the PUT, every replica must already have it
        if len(served_by) == 2:
            break
        answer = service.predict("side-door", png()).json()
        versions.add(answer["version"])
        served_by.add(answer["predictions"][0]["replica"])
    assert versions == {1} and len(served_by) == 2
    replaced = put(second)
    assert replaced.status_code == 200 and replaced.json()["task"]["version"] == 2
    assert service.predict("side-door", png()).json()["version"] == 2
    listed = {t["task_id"]: t for t in requests.get(f"{service.url}/v1/tasks", timeout=30).json()["tasks"]}
    assert listed["side-door"]["version"] == 2

    assert requests.delete(task_url, timeout=30).status_code == 401
    gone = requests.delete(task_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert gone.status_code == 200 and gone.json()["removed"] and gone.json()["servable_everywhere"]
    assert service.predict("side-door", png()).status_code == 404
    assert requests.delete(task_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).status_code == 404
    assert requests.get(f"{admin}/v1/tasks/side-door/predict", timeout=30).status_code == 404  # admin routes only


def test_mixed_batches_and_metrics_of_every_replica_on_one_endpoint(service):
    for i in range(3):
        service.put(f"mix{i}", service.adapter(seed=40 + i)[0])
    threads = [threading.Thread(target=lambda t=t: [service.predict(t, png()) for _ in range(6)])
               for t in ("mix0", "mix1", "mix2", "__backbone__") * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    service.predict("nobody", png())

    deadline, families = time.monotonic() + 30, {}
    while time.monotonic() < deadline:  # replicas report every few heartbeats
        text = requests.get(f"{service.url}/metrics", timeout=30).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        batch = families.get("mosaserve_batch_size")
        if batch and len({s.labels["replica"] for s in batch.samples if s.name.endswith("_count") and s.value}) == 2:
            break
        time.sleep(0.5)

    def values(name: str, sample: str, **labels) -> list[float]:
        return [s.value for s in families[name].samples
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]

    assert sum(values("mosaserve_requests", "mosaserve_requests_total", task="mix0")) >= 6
    assert sum(values("mosaserve_request_errors", "mosaserve_request_errors_total", code="404")) >= 1
    assert sum(values("mosaserve_request_latency_seconds", "mosaserve_request_latency_seconds_count", task="mix1")) >= 6
    for name in ("mosaserve_batch_size", "mosaserve_batch_distinct_tasks", "mosaserve_queue_wait_seconds",
                 "mosaserve_batch_backbone_seconds", "mosaserve_batch_adapter_seconds", "mosaserve_swap_latency_seconds"):
        counts = values(name, f"{name}_count")
        assert len([c for c in counts if c > 0]) == 2, name  # both replicas report
    adapter, backbone = (sum(values(n, f"{n}_sum")) for n in
                         ("mosaserve_batch_adapter_seconds", "mosaserve_batch_backbone_seconds"))
    assert 0 < adapter < backbone  # measured on live batches
    distinct_sum = sum(values("mosaserve_batch_distinct_tasks", "mosaserve_batch_distinct_tasks_sum"))
    batches = sum(values("mosaserve_batch_distinct_tasks", "mosaserve_batch_distinct_tasks_count"))
    assert distinct_sum > batches  # some batches mixed several tasks
    assert max(values("mosaserve_registered_tasks", "mosaserve_registered_tasks")) >= 3
    assert sum(values("mosaserve_resident_adapters", "mosaserve_resident_adapters")) >= 1
    assert sum(values("mosaserve_adapter_swaps", "mosaserve_adapter_swaps_total", action="register")) >= 6
    assert sum(values("mosaserve_registration_latency_seconds", "mosaserve_registration_latency_seconds_count")) >= 3


def test_restarted_application_serves_every_registered_task(service):
    from ray import serve

    data, model = service.adapter(seed=51)
    assert service.put("durable", service.adapter(seed=50)[0]).status_code == 201
    assert service.put("durable", data).json()["task"]["version"] == 2
    board = serve.get_deployment_handle("TaskBoard", APP)
    generation = board.status.remote().result(timeout_s=30)["generation"]
    again = service.put("durable", data)  # a retry of the same upload: PUT is idempotent, no version 3
    assert again.status_code == 200 and again.json()["task"]["version"] == 2 and again.json()["servable_everywhere"]
    assert board.status.remote().result(timeout_s=30)["generation"] == generation  # nothing announced
    before = {t["task_id"]: t["version"] for t in requests.get(f"{service.url}/v1/tasks", timeout=30).json()["tasks"]}
    serve.delete(APP)
    deploy(service.config)
    wait_healthy(service.url, 2)
    after = {t["task_id"]: t["version"] for t in requests.get(f"{service.url}/v1/tasks", timeout=30).json()["tasks"]}
    assert after == before and after["durable"] == 2
    answer = service.predict("durable", png()).json()
    assert answer["version"] == 2
    assert answer["predictions"][0]["top_k"][0]["label"] == expected_top(service, model, png())[0]


def test_openapi_docs_are_served(service):
    spec = requests.get(f"{service.url}/openapi.json", timeout=30).json()
    assert {"/v1/tasks", "/v1/tasks/{task_id}", "/v1/tasks/{task_id}/predict", "/v1/predict", "/healthz",
            "/metrics", "/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{task_id}/infer",
            "/v2/models/{task_id}/versions/{version}/infer"} <= set(spec["paths"])


def test_a_dataset_on_disk_becomes_a_live_task_through_the_python_client(service, tmp_path):
    """Image folder -> trained, merged adapter file -> registered by the client -> served without restart."""
    from mosaserve import client as c
    from mosaserve.adapters.demo import run_demo
    from mosaserve.adapters.training import TrainConfig

    for name, colour in (("light", 220), ("dark", 20)):
        (tmp_path / "shades" / name).mkdir(parents=True)
        for i in range(10):
            Image.new("L", (18, 18), colour + (i % 3)).save(tmp_path / "shades" / name / f"{i}.png")
    rows = run_demo(tmp_path / "out", ("mosa",), f"folder:{tmp_path / 'shades'}", train_cfg=TrainConfig(epochs=1),
                    progress=False, backbone_spec=service.config.runtime.backbone)
    admin, anyone = c.Client(service.url, token=TOKEN), c.Client(service.url)
    answer = admin.register("shades", rows[0].file)
    assert answer["servable_everywhere"] and answer["task"]["labels"] == ["dark", "light"]
    assert admin.task("shades")["version"] == 1 and "shades" in {t["task_id"] for t in anyone.tasks()}

    light = tmp_path / "light.png"
    light.write_bytes(png(color=(220, 220, 220)))
    one = anyone.predict("shades", light, top_k=1)
    assert one["task_id"] == "shades" and {p["top_k"][0]["label"] for p in one["predictions"]} <= {"dark", "light"}
    listed = anyone.predict("shades", [light, light.read_bytes()], top_k=1)["predictions"]
    assert [p["top_k"] for p in listed] == [one["predictions"][0]["top_k"]] * 2
    many = anyone.predict_many(["shades", "__backbone__"], light, top_k=1)
    assert [a["task_id"] for a in many] == ["shades", "__backbone__"] \
        and many[0]["predictions"][0]["top_k"] == one["predictions"][0]["top_k"]  # any replica may answer

    refusals = ((c.UnauthorizedError, lambda: c.Client(service.url, token="wrong").register("x", rows[0].file)),
                (c.UnauthorizedError, lambda: anyone.remove("shades")),  # no token given: refused before sending
                (c.InvalidAdapterError, lambda: admin.register("junk", b"not an adapter file")),
                (c.BadRequestError, lambda: anyone.predict("shades", b"not an image")),
                (c.TooLargeError, lambda: anyone.predict("shades", [light] * 5)),  # the limit is 4 images
                (c.NotFoundError, lambda: anyone.predict("nobody", light)),
                (c.UnreachableError, lambda: c.Client("http://127.0.0.1:9").tasks()))
    for error, call in refusals:
        with pytest.raises(error):
            call()
    admin.remove("shades")
    with pytest.raises(c.NotFoundError, match="404"):
        anyone.task("shades")


ADMIN = {"Authorization": "Bearer test-admin-token"}


def wait_for_job(service, job_id: str, states: set[str], timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = requests.get(f"{service.url}/v1/train/{job_id}", headers=ADMIN, timeout=30).json()
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} never reached {states}")


def test_training_job_turns_a_dataset_into_a_live_task(service):
    from mosaserve.client import Client

    admin = Client(service.url, token=TOKEN)
    submitted = admin.train("digits-live", "digits", method="mosa", epochs=2, train_size=120, test_size=60)
    assert submitted["state"] in ("queued", "running")
    job = admin.wait(submitted["job_id"], timeout_s=300, poll_s=0.2)
    assert job["state"] == "succeeded", job
    assert job["epoch"] == 2 and job["loss"] > 0 and 0 <= job["test_accuracy"] <= 1 and job["version"] == 1
    answer = service.predict("digits-live", png())  # servable everywhere when the job says succeeded
    assert answer.status_code == 200 and answer.json()["version"] == 1
    assert len(answer.json()["predictions"][0]["top_k"]) == 5  # ten digit classes, top 5
    deadline, succeeded = time.monotonic() + 20, []
    while time.monotonic() < deadline and not succeeded:  # the trainer reports its metrics every 5 s
        text = requests.get(f"{service.url}/metrics", timeout=30).text
        succeeded = [line for line in text.splitlines()
                     if line.startswith("mosaserve_training_jobs_total") and 'state="succeeded"' in line]
        time.sleep(0.5)
    assert succeeded and float(succeeded[0].split()[-1]) >= 1, text[-2000:]


def test_training_jobs_can_be_cancelled_and_bad_requests_are_refused(service):
    url = f"{service.url}/v1/train"
    long_job = {"task_id": "never-live", "dataset": "digits", "epochs": 1000, "train_size": 100, "test_size": 20}
    job_id = requests.post(url, json=long_job, headers=ADMIN, timeout=30).json()["job_id"]
    running = wait_for_job(service, job_id, {"running"})
    assert requests.delete(f"{url}/{job_id}", headers=ADMIN, timeout=30).status_code == 200
    cancelled = wait_for_job(service, job_id, {"cancelled", "succeeded", "failed"})
    assert cancelled["state"] == "cancelled" and running["job_id"] == job_id
    assert requests.get(f"{service.url}/v1/tasks/never-live", timeout=30).status_code == 404  # nothing published

    missing = requests.post(url, json={"task_id": "m", "dataset": "folder:absent"}, headers=ADMIN, timeout=30).json()
    assert "job_id" in missing, missing
    failed = wait_for_job(service, missing["job_id"], {"failed", "succeeded"})
    assert failed["state"] == "failed" and "does not exist" in failed["error"]

    assert requests.post(url, json=long_job, timeout=30).status_code == 401
    for bad in ({"task_id": "x"}, {"task_id": "x", "dataset": "digits", "method": "sgd"},
                {"task_id": "x", "dataset": "folder:../outside"}, {"task_id": "x", "dataset": "/etc/passwd"},
                {"task_id": "x", "dataset": "digits", "epochs": 0}, {"task_id": "bad..id", "dataset": "digits"},
                {"task_id": "x", "dataset": "digits", "extra": 1}, [1, 2]):
        reply = requests.post(url, json=bad, headers=ADMIN, timeout=30)
        assert reply.status_code == 400 and reply.json()["error"], bad
    assert requests.post(url, data=b"{oops", headers=ADMIN, timeout=30).status_code == 400
    assert requests.get(f"{url}/nope", headers=ADMIN, timeout=30).status_code == 404


def test_a_cancel_after_the_last_epoch_says_it_will_not_cancel_and_the_job_goes_live(service):
    body = {"task_id": "too-late", "dataset": "digits", "epochs": 1, "train_size": 60, "test_size": 20}
    # Hold the store's writer lock: the job trains, then waits in its registration, past its last epoch.
    with holding_store_writer_lock(service):
        job_id = requests.post(f"{service.url}/v1/train", json=body, headers=ADMIN, timeout=30).json()["job_id"]
        deadline, job = time.monotonic() + 120, {}
        while time.monotonic() < deadline and job.get("epoch", 0) < 1:
            job = requests.get(f"{service.url}/v1/train/{job_id}", headers=ADMIN, timeout=30).json()
            time.sleep(0.1)
        time.sleep(1.0)  # evaluated on its test split, now registering
        answer = requests.delete(f"{service.url}/v1/train/{job_id}", headers=ADMIN, timeout=30).json()
        assert answer["state"] == "running" and answer["cancel_requested"] is False, answer
    done = wait_for_job(service, job_id, {"succeeded", "failed", "cancelled"})
    assert done["state"] == "succeeded" and not done["cancel_requested"]
    assert requests.get(f"{service.url}/v1/tasks/too-late", timeout=30).status_code == 200


def start_job_and_wait_for_first_epoch(service, body: dict) -> dict:
    job_id = requests.post(f"{service.url}/v1/train", json=body, headers=ADMIN, timeout=30).json()["job_id"]
    deadline, job = time.monotonic() + 120, {}
    while time.monotonic() < deadline and job.get("epoch", 0) < 1:
        job = requests.get(f"{service.url}/v1/train/{job_id}", headers=ADMIN, timeout=30).json()
        time.sleep(0.1)
    assert job["state"] == "running" and 1 <= job["epoch"] < body["epochs"], job
    return job


def poll_until_finished(service, job_id: str, timeout_s: float, on_poll=None) -> dict:
    """Polls through the outage: while Serve replaces the killed replica, requests may fail or wait."""
    deadline, job = time.monotonic() + timeout_s, {"state": "?"}
    while time.monotonic() < deadline and job["state"] not in ("succeeded", "failed", "cancelled"):
        reply = requests.get(f"{service.url}/v1/train/{job_id}", headers=ADMIN, timeout=60)
        if reply.status_code == 200:
            job = reply.json()
            if on_poll is not None:
                on_poll(job)
        time.sleep(0.2)
    return job


def test_training_job_resumes_after_the_sidecar_is_killed_and_publishes_once(service):
    from mosaserve.adapters.train_state import load_train_state
    from mosaserve.runtime.store import AdapterStore

    store, epochs = AdapterStore(service.config.runtime.store_dir), 40
    body = {"task_id": "survivor", "dataset": "digits", "epochs": epochs, "train_size": 600, "test_size": 60}
    job_id = start_job_and_wait_for_first_epoch(service, body)["job_id"]
    job_dir = service.config.resolved_jobs_dir() / job_id

    crash_actor("TrainingSidecar")
    checkpoint = load_train_state(job_dir / "checkpoint.safetensors")  # complete, though its writer died
    assert checkpoint.epochs_done >= 1
    assert "survivor" not in store.entries()
    assert requests.get(f"{service.url}/v1/tasks/survivor", timeout=30).status_code == 404

    seen = []  # (epoch, published) at every poll: nothing is published before training has ended
    job = poll_until_finished(service, job_id, 240, lambda j: seen.append((j["epoch"], "survivor" in store.entries())))
    assert job["state"] == "succeeded", job
    assert job["restarts"] == 1 and job["resumed_from_epoch"] >= checkpoint.epochs_done >= 1, job
    assert job["epoch"] == epochs and job["version"] == 1 and store.entries()["survivor"].version == 1
    assert seen and not [s for s in seen if s[1] and s[0] < epochs], seen
    assert not (job_dir / "checkpoint.safetensors").exists()  # finished: its checkpoint is gone
    answer = service.predict("survivor", png())
    assert answer.status_code == 200 and answer.json()["version"] == 1


def test_training_job_whose_checkpoint_is_damaged_while_the_sidecar_is_down_fails_clearly(service):
    from mosaserve.runtime.store import AdapterStore

    body = {"task_id": "casualty", "dataset": "digits", "epochs": 40, "train_size": 600, "test_size": 60}
    job_id = start_job_and_wait_for_first_epoch(service, body)["job_id"]
    crash_actor("TrainingSidecar")
    checkpoint = service.config.resolved_jobs_dir() / job_id / "checkpoint.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])  # while Serve replaces the dead replica
    job = poll_until_finished(service, job_id, 120)
    assert job["state"] == "failed" and job["restarts"] == 1, job
    assert job["error"].startswith("JobResumeError: cannot resume: training checkpoint"), job
    assert "unreadable" in job["error"]
    assert "casualty" not in AdapterStore(service.config.runtime.store_dir).entries()
    assert requests.get(f"{service.url}/v1/tasks/casualty", timeout=30).status_code == 404
    assert not checkpoint.exists()
